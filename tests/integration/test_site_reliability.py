"""The site poller when things go wrong (issue 13), on real brokers and the sim over HTTP through
unmodified openstacksdk: deletions within two polls, unreadable objects, a site clock a minute
off, a cell that vanishes, a site down at start-up, broker restarts, SIGTERM in every state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from connector.config import Settings
from connector.dev import free_port
from connector.dev.local_kafka import LocalKafka
from connector.dev.sim import RunningSim
from connector.dev.sim.model import PORT, SERVER, VOLUME
from connector.records.model import StatusRecord
from connector.sinks import open_sink
from connector.sinks.sql import create_engine
from connector.site.runner import open_site_poller, run_site
from connector.top.service import build_consumer
from tests.support import wait_for
from tests.support.kafka import BROKER_START
from tests.support.sim import Topic, control, differences, latest, site_settings, truth

KINDS = "server,volume,port"
CLI = [sys.executable, "-m", "connector"]


def timed_wait(
    what: str, condition: Callable[[], bool], timeout: float, explain: Callable[[], str]
) -> float:
    """`wait_for`, returning the seconds it took; on a timeout, `explain()` says what was wrong."""
    begun = time.monotonic()
    try:
        wait_for(condition, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {explain()}") from None
    return time.monotonic() - begun


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def sim_requests(sim: RunningSim) -> dict[str, int]:
    requests: dict[str, int] = control(sim, "/_sim/stats")["requests"]
    urllib.request.urlopen(urllib.request.Request(sim.url + "/_sim/stats", method="DELETE"))
    return requests


def delete_one_of_each(sim: RunningSim) -> None:
    """Delete a server (Nova releases its volumes and deletes its ports), a volume, a port."""
    with sim.site.lock:
        for kind in (SERVER, VOLUME, PORT):
            sim.site.delete(next(iter(sim.site.live(kind))), sim.site.now())


# -- deletions, unreadable objects, clock skew, mass vanish: one process, the shared broker -----


def test_deletions_reach_the_topic_within_two_polls_without_full_listings(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    sim = open_sim(servers=30, volumes=30, ports=30, neutron_changed_since="accept")
    registry = CollectorRegistry()
    site = open_site_poller(
        site_settings(kafka_bootstrap, sim, kinds=KINDS, deletion_sweep_every=2), registry
    )
    site.cycle(resync=True)
    delete_one_of_each(sim)
    sim_requests(sim)
    assert site.cycle(resync=False) == dict.fromkeys(KINDS.split(","), "incremental")
    assert site.cycle(resync=False) == dict.fromkeys(KINDS.split(","), "incremental")
    site.flush()
    topic = Topic(kafka_bootstrap, site.topic)
    assert differences(topic.all(), truth(sim, KINDS)) == []
    requests = sim_requests(sim)
    assert requests["GET /volume/v3/{id}/volumes/summary"] == 2, "a count every poll"
    assert requests["GET /volume/v3/{id}/volumes"] == 1, "one id sweep, on the mismatch"
    # Two incremental polls, each listing by updated_at and by created_at (Cinder leaves
    # updated_at null on a new volume), and no full listing.
    assert requests["GET /volume/v3/{id}/volumes/detail"] == 4, "incremental listings only"
    assert requests["GET /networking/v2.0/ports"] == 3, "two incremental, one id sweep"
    sweeps = "cascade_site_deletion_sweeps_total"
    labels = {"site": sim.cloud, "kind": "volume", "reason": "count"}
    assert sample(registry, sweeps, **labels) == 1


def test_corrupt_servers_are_skipped_and_everything_else_is_published(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], tmp_path: Path
) -> None:
    sim = open_sim(servers=40, volumes=20, ports=20)
    corrupt = control(sim, "/_sim/corrupt", {"kind": "server", "count": 5})["corrupt"]
    assert sorted(corrupt.values()).count("bad-time") == 2 and len(corrupt) == 5
    prefix = "test.corrupt"
    out = subprocess.run(
        [*CLI, "produce", "--site", sim.cloud, "--once", "--kinds", KINDS],
        env={
            **os.environ,
            "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"),
            "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CASCADE_KAFKA_TOPIC_PREFIX": prefix,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    changes = Topic(kafka_bootstrap, f"{prefix}.{sim.cloud}").all()
    expected = {key: v for key, v in truth(sim, KINDS).items() if key[1] not in corrupt}
    assert len(expected) == 75
    assert differences(changes, expected) == []
    heartbeat = [c for c in changes if isinstance(c, StatusRecord) and c.is_heartbeat][-1]
    assert heartbeat.status == "degraded" and heartbeat.details["server.unparseable"] == 5
    assert out.stderr.count("cannot read") == 5, "logged once per object"


@pytest.mark.parametrize("skew", [60.0, -60.0], ids=["site-ahead", "site-behind"])
def test_a_site_clock_a_minute_off_loses_no_change(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], skew: float
) -> None:
    sim = open_sim(servers=20, volumes=20, ports=20, clock_skew=skew)
    registry = CollectorRegistry()
    site = open_site_poller(site_settings(kafka_bootstrap, sim, kinds=KINDS), registry)
    site.cycle(resync=True)
    offset = sample(registry, "cascade_site_clock_offset_seconds", site=sim.cloud, kind="port")
    assert abs(offset - skew) < 2.0, f"measured {offset}"
    for _ in range(3):
        control(sim, "/_sim/churn", {"changes": 20})
        site.cycle(resync=False)
    site.flush()
    assert differences(Topic(kafka_bootstrap, site.topic).all(), truth(sim, KINDS)) == []


def test_a_cell_going_down_does_not_tombstone_its_servers(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    sim = open_sim(servers=100, volumes=10, ports=10)
    site = open_site_poller(site_settings(kafka_bootstrap, sim, kinds="server"))
    site.cycle(resync=True)
    control(sim, "/_sim/faults", {"seconds": 60, "hide": {"kind": "server", "share": 0.3}})
    assert len(control(sim, "/_sim/truth?kind=server")["objects"]) == 100, "hidden, not gone"
    site.cycle(resync=True)
    status, details = site.health.heartbeat()
    assert status == "degraded" and 20 < int(str(details["server.held_back"])) < 40
    urllib.request.urlopen(urllib.request.Request(sim.url + "/_sim/faults", method="DELETE"))
    site.cycle(resync=True)
    site.flush()
    changes = Topic(kafka_bootstrap, site.topic).all()
    assert differences(changes, truth(sim, "server")) == []
    assert len(latest(changes)) == 100
    assert site.health.heartbeat()[0] == "ok"


def test_keystone_and_cinder_down_at_start_up_give_a_running_degraded_poller(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    sim = open_sim(servers=20, volumes=20, ports=20)
    # Down until every kind has met the fault, however long the election takes to make the
    # poller (Kafka answering slowly): then Keystone comes back, and Cinder after it.
    control(sim, "/_sim/faults", {"seconds": 600, "status": 503, "paths": ["/identity"]})
    control(sim, "/_sim/faults", {"seconds": 600, "status": 503, "paths": ["/volume"]})
    settings = site_settings(
        kafka_bootstrap, sim, kinds=KINDS, interval=0.5, backoff_initial=0.2, backoff_max=1.0
    )
    registry = CollectorRegistry()
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            run_site(settings, registry=registry, stop=stop)
        except BaseException as exc:
            failed.append(exc)

    def lift(path: str) -> None:
        url = f"{sim.url}/_sim/faults?path={path}"
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"))

    thread = threading.Thread(target=run, name="poller-under-test")
    thread.start()
    site = sim.cloud
    good = "cascade_site_last_good_poll_timestamp_seconds"
    try:
        wait_for(
            lambda: all(
                sample(registry, "cascade_site_api_errors_total", site=site, kind=k)
                for k in KINDS.split(",")
            ),
            120,
            "an error on every kind",
        )
        assert sample(registry, "cascade_site_degraded", site=site) == 1
        assert not any(sample(registry, good, site=site, kind=k) for k in KINDS.split(","))
        lift("/identity")
        wait_for(
            lambda: (
                sample(registry, good, site=site, kind="server")
                and sample(registry, good, site=site, kind="port")
            ),
            60,
            "servers and ports polled once Keystone is back",
        )
        assert not sample(registry, good, site=site, kind="volume"), "Cinder is still down"
        assert sample(registry, "cascade_site_degraded", site=site) == 1
        lift("/volume")
        wait_for(lambda: sample(registry, good, site=site, kind="volume") > 0, 60, "volumes polled")
        wait_for(lambda: sample(registry, "cascade_site_degraded", site=site) == 0, 60, "healthy")
        assert not failed and thread.is_alive()
    finally:
        stop.set()
        thread.join(15)
    assert not failed, failed


# -- a broker of the tests' own (`private_kafka`), stopped and started -----------------------


def live_rows(db: Path) -> dict[tuple[str, str], str | None]:
    """What the SQL sink holds: (kind, id) -> status of every row not marked deleted."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT kind, id, status, deleted FROM resource_status"))
            return {(r[0], r[1]): r[2] for r in rows if r[0] != "site" and not r[3]}
    except sa.exc.OperationalError:
        return {}  # the consumer has not made the table yet
    finally:
        engine.dispose()


def truth_status(sim: RunningSim) -> dict[tuple[str, str], str | None]:
    return {key: value["status"] for key, value in truth(sim, KINDS).items()}


def churn_every_kind(sim: RunningSim) -> None:
    """Random transitions and creations, and a deletion of each kind (a volume included)."""
    control(sim, "/_sim/churn", {"changes": 40})
    delete_one_of_each(sim)


# Three broker restarts: seconds each on an idle machine, a minute each on two busy cores.
@pytest.mark.timeout(600)
def test_poller_and_consumer_converge_within_15s_after_each_of_three_broker_restarts(
    private_kafka: LocalKafka,
    open_sim: Callable[..., RunningSim],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    sim = open_sim(servers=40, volumes=40, ports=60, neutron_changed_since="accept")
    db = tmp_path / "top.sqlite"
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap": private_kafka.bootstrap, "topic_prefix": unique_name("status")},
            # The default resync interval: deletions must not wait for it.
            "site": {"name": sim.cloud, "kinds": KINDS, "interval": 1.0, "heartbeat_interval": 1},
            "sink": {"url": f"sqlite:///{db}"},
            "consumer": {
                "group": unique_name("group"),
                "dead_letter_topic": unique_name("dlq"),
                "batch_wait_ms": 100,
            },
        }
    )
    assert settings.site.resync_interval == 600
    stop = threading.Event()
    poller = threading.Thread(
        target=run_site, args=(settings,), kwargs={"registry": CollectorRegistry(), "stop": stop}
    )
    # A broker that takes longer to restart than the group session (45 s by default: a minute
    # on a loaded machine) makes the member rejoin as a new one, and the group then waits out
    # the old member's session. A shorter session keeps that wait inside the 15 s.
    consumer_settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={
                    "librdkafka": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
                }
            )
        }
    )
    consumer = build_consumer(consumer_settings, open_sink(settings.sink), CollectorRegistry())
    consuming = threading.Thread(target=consumer.run)
    poller.start()
    consuming.start()
    recoveries: list[float] = []
    topic = Topic(private_kafka.bootstrap, f"{settings.kafka.topic_prefix}.{sim.cloud}")

    def explain() -> str:
        expected, rows = truth_status(sim), live_rows(db)
        wrong = [key for key in expected.keys() | rows.keys() if expected.get(key) != rows.get(key)]
        on_topic = differences(topic.all(settle=False), truth(sim, KINDS))
        return (
            f"after {len(recoveries)} restart(s), {len(wrong)} rows differ from the truth "
            f"({wrong[:3]}); the topic differs by {len(on_topic)} ({on_topic[:3]})"
        )

    try:
        timed_wait("the first sync", lambda: live_rows(db) == truth_status(sim), 60, explain)
        for _ in range(3):
            private_kafka.stop()
            churn_every_kind(sim)
            private_kafka.start(timeout=BROKER_START, echo=False)
            recoveries.append(
                timed_wait(
                    "convergence after the restart",
                    lambda: live_rows(db) == truth_status(sim),
                    15.0,
                    explain,
                )
            )
    finally:
        stop.set()
        consumer.stop()
        poller.join(15)
        consuming.join(30)
    assert not poller.is_alive() and not consuming.is_alive()
    print(f"converged after each broker restart in {[round(r, 1) for r in recoveries]} s")


def test_sigterm_ends_a_poller_within_10s_while_the_broker_is_down(
    private_kafka: LocalKafka, open_sim: Callable[..., RunningSim], tmp_path: Path
) -> None:
    sim = open_sim(servers=20, volumes=20, ports=20)
    port = free_port()
    env = {
        **os.environ,
        "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"),
        "CASCADE_KAFKA_BOOTSTRAP": private_kafka.bootstrap,
        "CASCADE_KAFKA_TOPIC_PREFIX": "test.sigterm",
        # The broker being down at start-up is told after one admin timeout: 30 s by default,
        # waiting that shows nothing the first few seconds do not.
        "CASCADE_KAFKA_ADMIN_TIMEOUT": "3",
    }
    args = [*CLI, "produce", "--site", sim.cloud, "--kinds", KINDS, "--interval", "0.5"]
    args += ["--metrics-port", str(port)]

    def metric(name: str) -> float:
        """The sum over its labels (one site, every kind); 0 while the process does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    def start_poller(log: Path) -> subprocess.Popen[str]:
        # Its log goes to a file: a pipe nobody reads until the end could fill up and block it.
        with log.open("w") as out:
            return subprocess.Popen(args, env=env, stderr=out, text=True)

    def stop_within_10s(proc: subprocess.Popen[str], log: Path) -> str:
        proc.send_signal(signal.SIGTERM)
        begun = time.monotonic()
        try:
            proc.wait(timeout=20)
        finally:
            proc.kill()
            proc.wait()
        took = time.monotonic() - begun
        err = log.read_text(errors="replace")
        assert proc.returncode == 0, err
        assert took < 10.0, f"took {took:.1f} s to stop"
        return err

    # Down at start-up: the poller retries the topic, degraded, and stops at once. (A broker
    # left stopped here is started again by `private_kafka` for whichever test needs it next.)
    private_kafka.stop()
    log = tmp_path / "starting.log"
    starting = start_poller(log)
    try:
        wait_for(lambda: metric("cascade_site_kafka_errors_total") > 0, 60, "a Kafka error")
        assert metric("cascade_site_degraded") == 1
    finally:
        err = stop_within_10s(starting, log)
    assert "cannot ensure the site topic" in err

    # Down while running, with messages waiting to be delivered.
    private_kafka.start(timeout=BROKER_START, echo=False)
    log = tmp_path / "running.log"
    running = start_poller(log)
    try:
        wait_for(lambda: metric("cascade_site_heartbeats_total") > 0, 60, "a heartbeat")
        wait_for(lambda: metric("cascade_site_changes_published_total") > 0, 60, "a poll")
        private_kafka.stop()

        def failed_commits() -> int:
            # A streak's first failure, then a line every few seconds while it lasts.
            lines = log.read_text(errors="replace").splitlines()
            return sum(1 for line in lines if "commit of" in line and "fail" in line)

        before = failed_commits()
        control(sim, "/_sim/churn", {"changes": 30})
        # A transaction is opened by its first message only: a commit that fails is one with
        # messages waiting. The churn's, or a heartbeat's, or (whichever came first) the one
        # whose commit was under way at the stop, which holds the producer until it gives up.
        wait_for(lambda: failed_commits() > before, 60, "a commit failing: messages waiting")
        wait_for(lambda: metric("cascade_site_degraded") == 1, 60, "degraded")
    finally:
        err = stop_within_10s(running, log)
    assert "undelivered" in err and "republishes them from the site" in err


def test_hostile_servers_an_id_of_5000_digits_among_them_are_skipped_alone(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    """One of each hostile corruption (an id that is an integer of 5,000 digits, past Python's
    4,300, among them: it made the whole page unparseable, every poll): each object is skipped
    as unreadable, every other object is published."""
    sim = open_sim(servers=30, volumes=0, ports=0)
    corrupt = control(sim, "/_sim/corrupt", {"kind": "server", "count": 14, "hostile": True})
    assert "huge-int-id" in corrupt["corrupt"].values(), corrupt
    site = open_site_poller(site_settings(kafka_bootstrap, sim, kinds="server"))
    site.cycle(resync=True)  # raised before: "Exceeds the limit (4300 digits) ..."
    site.heartbeat()
    site.flush()
    changes = Topic(kafka_bootstrap, site.topic).all()
    expected = {
        key: v for key, v in truth(sim, "server").items() if key[1] not in corrupt["corrupt"]
    }
    assert len(expected) == 16
    assert differences(changes, expected) == []
    heartbeat = [c for c in changes if isinstance(c, StatusRecord) and c.is_heartbeat][-1]
    assert heartbeat.details["server.unparseable"] == 14
