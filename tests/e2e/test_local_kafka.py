"""`cascade-connector local-kafka start|status|stop` on a port of its own, as a user runs it."""

from __future__ import annotations

import socket
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tests.support.cli import run


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port < 65000:
            with socket.socket() as b:
                if b.connect_ex(("127.0.0.1", port + 1)) != 0:
                    return int(port)
    raise AssertionError("no free port pair")


def test_start_status_stop(tmp_path: Path) -> None:
    port = _free_port_pair()
    base = ["local-kafka", "--port", str(port), "--state-dir", str(tmp_path)]
    started = run(*base, "start")
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().endswith(f"127.0.0.1:{port}")
        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert list(metadata.brokers) == [1]

        again = run(*base, "start")
        assert again.returncode == 0 and again.stdout.strip() == f"127.0.0.1:{port}"

        status = run(*base, "status")
        assert status.returncode == 0
        assert f"answering on 127.0.0.1:{port}" in status.stdout
    finally:
        stopped = run(*base, "stop")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped"
    status = run(*base, "status")
    assert status.returncode == 1 and "not running" in status.stdout


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        out = run("local-kafka", "--port", str(port), "--state-dir", str(tmp_path), "start")
    assert out.returncode == 3
    assert f"port {port}" in out.stderr and "in use" in out.stderr


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    port = _free_port_pair()
    out = run(
        "local-kafka",
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "cache"),
        "start",
        env={"PATH": "/nonexistent"},
    )
    assert out.returncode == 3
    assert "`java` was not found" in out.stderr or "`mvn` was not found" in out.stderr
