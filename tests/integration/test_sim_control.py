"""The sim's control API over HTTP: truth, stats counters, churn, storm, faults, bad input,
and the `cascade-connector sim` command as a process."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from connector.dev.sim import RunningSim, start_sim
from tests.support import wait_for


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    with start_sim("ctl", servers=300, volumes=200, ports=300, seed=9) as running:
        yield running


def call(sim: RunningSim, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{sim.url}/_sim/{path}", json=body, timeout=30)


def statuses(sim: RunningSim) -> dict[tuple[str, str], str]:
    objects = call(sim, "GET", "truth").json()["objects"]
    return {(o["kind"], o["id"]): o["status"] for o in objects}


def test_truth_lists_every_live_object_with_details(sim: RunningSim) -> None:
    objects = call(sim, "GET", "truth").json()["objects"]
    counts = call(sim, "GET", "stats").json()["objects"]
    for kind, n in counts.items():
        assert sum(1 for o in objects if o["kind"] == kind) == n
    server = next(o for o in objects if o["kind"] == "server")
    assert {"kind", "id", "status", "name", "project_id", "vm_state", "task_state"} <= set(server)
    port = next(o for o in objects if o["kind"] == "port")
    assert {"revision_number", "device_owner", "binding_host"} <= set(port)
    only = call(sim, "GET", "truth?kind=volume").json()["objects"]
    assert {o["kind"] for o in only} == {"volume"} and "attachments" in only[0]
    assert call(sim, "GET", "truth?kind=flavor").status_code == 400


def test_churn_now_counts_every_change(sim: RunningSim) -> None:
    before = statuses(sim)
    done = call(sim, "POST", "churn", {"changes": 120}).json()
    assert sum(done.values()) == 120
    stats = call(sim, "GET", "stats").json()
    # A server deletion also releases its volumes and ports: more changes than asked for.
    assert stats["status_changes"] >= 120
    assert stats["created"] >= done["created"] and stats["deleted"] >= done["deleted"]
    assert sum(stats["status_changes_by_kind"].values()) == stats["status_changes"]
    after = statuses(sim)
    assert before != after
    call(sim, "DELETE", "stats")
    assert call(sim, "GET", "stats").json()["status_changes"] == 0


def test_background_churn_runs_for_its_time(sim: RunningSim) -> None:
    answer = call(sim, "POST", "churn", {"rate": 400, "seconds": 0.5})
    assert answer.status_code == 202
    wait_for(lambda: call(sim, "GET", "stats").json()["background_jobs"] == 0)
    assert call(sim, "GET", "stats").json()["status_changes"] >= 200


def test_storm_flaps_and_settles_where_it_started(sim: RunningSim) -> None:
    before = statuses(sim)
    started = call(sim, "POST", "storm", {"flaps": 3, "seconds": 0.6, "kinds": ["port"]}).json()
    assert started["kinds"] == ["port"] and started["objects"] > 0
    assert started["changes"] == 3 * 3 * started["objects"]  # DOWN, BUILD, ACTIVE, 3 times
    wait_for(lambda: call(sim, "GET", "stats").json()["background_jobs"] == 0)
    stats = call(sim, "GET", "stats").json()
    assert stats["status_changes"] == started["changes"]
    assert stats["status_changes_by_kind"]["port"] == started["changes"]
    assert statuses(sim) == before


def test_api_requests_and_bytes_are_counted(sim: RunningSim) -> None:
    requests.get(f"{sim.url}/compute/", timeout=10)
    requests.get(f"{sim.url}/compute/v2.1/servers/{'1' * 32}", timeout=10)
    requests.get(f"{sim.url}/compute/", headers={"User-Agent": "poc-proxy/1 x/2"}, timeout=10)
    stats = call(sim, "GET", "stats").json()
    assert stats["requests"] == {"GET /compute": 2, "GET /compute/v2.1/servers/{id}": 1}
    assert stats["bytes_sent"] > 0
    clients = stats["clients"]
    assert set(clients) == {"python-requests", "poc-proxy"}
    assert clients["poc-proxy"]["requests"] == 1
    assert sum(c["bytes_sent"] for c in clients.values()) == stats["bytes_sent"]


def test_change_log_has_every_status_change_in_order(sim: RunningSim) -> None:
    assert call(sim, "GET", "changes").json() == {"next": 0, "length": 0, "changes": []}
    assert call(sim, "POST", "changes", {"record": True}).json() == {"recording": True}
    before = call(sim, "GET", "stats").json()["status_changes"]
    call(sim, "POST", "churn", {"changes": 50})
    logged = call(sim, "GET", "changes?after=0&limit=100000").json()
    assert len(logged["changes"]) == logged["length"] == logged["next"]
    # One entry per counted status change, so a push design's calls are the sim's own counter.
    assert logged["length"] == call(sim, "GET", "stats").json()["status_changes"] - before
    latest: dict[tuple[str, str], str | None] = {}
    for _at, kind, object_id, status in logged["changes"]:
        latest[(kind, object_id)] = status
    now = statuses(sim)
    for key, status in latest.items():
        assert now.get(key) == status  # None: deleted, gone from the truth
    page = call(sim, "GET", "changes?after=10&limit=5").json()
    assert page["next"] == 15 and page["changes"] == logged["changes"][10:15]
    call(sim, "POST", "changes", {"record": False})
    assert call(sim, "GET", "changes").json()["length"] == 0
    assert call(sim, "POST", "changes", {"record": "yes"}).status_code == 400


def test_faults_answer_500_or_hang_then_clear(sim: RunningSim) -> None:
    url = f"{sim.url}/networking/"
    assert call(sim, "POST", "faults", {"status": 503, "seconds": 60}).status_code == 200
    failed = requests.get(url, timeout=10)
    assert failed.status_code == 503 and "serviceUnavailable" in failed.json()
    assert call(sim, "GET", "info").status_code == 200  # the control API is never faulted
    call(sim, "DELETE", "faults")
    assert requests.get(url, timeout=10).status_code == 200
    call(sim, "POST", "faults", {"delay": 5, "seconds": 60, "paths": ["/networking"]})
    with pytest.raises(requests.Timeout):
        requests.get(url, timeout=0.5)
    assert requests.get(f"{sim.url}/compute/", timeout=2).status_code == 200
    call(sim, "DELETE", "faults")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("churn", {"changes": "many"}),
        ("churn", {"rate": 5}),
        ("storm", {"kinds": ["flavor"]}),
        ("storm", {"flaps": 0}),
        ("faults", {"seconds": 5}),
        ("faults", {"seconds": 5, "status": 200}),
    ],
)
def test_bad_control_requests_are_400(sim: RunningSim, path: str, body: Any) -> None:
    answer = call(sim, "POST", path, body)
    assert answer.status_code == 400 and answer.json()["error"]


def test_unknown_control_path_is_404(sim: RunningSim) -> None:
    assert call(sim, "GET", "nothing").status_code == 404


def test_a_client_hanging_up_is_a_debug_line_not_a_traceback(
    sim: RunningSim, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="connector.dev.sim.server")
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /_sim/truth HTTP/1.1\r\nHost: sim\r\n\r\n")
        # Close with a reset (linger 0) before reading: the sim's next read or write fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(
        lambda: any("went away" in r.getMessage() for r in caplog.records),
        10,
        "the sim to notice the client went away",
    )
    assert "Traceback" not in capfd.readouterr().err
    assert call(sim, "GET", "stats").status_code == 200


def test_cli_serves_writes_clouds_yaml_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"other": {"auth": {}}}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector",
            "sim",
            "--site",
            "clisite",
            "--listen",
            f"127.0.0.1:{port}",
            "--servers",
            "30",
            "--volumes",
            "20",
            "--ports",
            "30",
            "--seed",
            "4",
            "--write-clouds-yaml",
            str(clouds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:

        def answers() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return requests.get(f"http://127.0.0.1:{port}/_sim/info", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(answers)
        info = requests.get(f"http://127.0.0.1:{port}/_sim/info", timeout=5).json()
        assert info["site"] == "clisite" and info["seed"] == 4
        written = yaml.safe_load(clouds.read_text())["clouds"]
        assert set(written) == {"other", "clisite"}
        assert written["clisite"]["auth"]["auth_url"] == f"http://127.0.0.1:{port}/identity"
        truth = requests.get(f"http://127.0.0.1:{port}/_sim/truth", timeout=5).json()
        assert sum(1 for o in truth["objects"] if o["kind"] == "server") == 30
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "serving on" in out and "stopping" in out


def test_same_seed_same_truth_across_sites() -> None:
    def ids(seed: int) -> list[tuple[str, str, str]]:
        with start_sim("seeded", servers=50, volumes=50, ports=50, seed=seed) as sim:
            objects = call(sim, "GET", "truth").json()["objects"]
        return sorted((o["kind"], o["id"], o["status"]) for o in objects)

    assert ids(21) == ids(21) != ids(22)
