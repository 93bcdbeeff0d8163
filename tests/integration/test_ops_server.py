"""The metrics and health server against hostile clients: it listens on loopback unless told
otherwise, drops a connection that says nothing, serves a bounded number of connections at once,
and never shows a secret in a health text."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

from prometheus_client import CollectorRegistry

from connector.ops.ops_server import OpsServer
from tests.support import wait_for


def _ready() -> tuple[bool, dict[str, Any]]:
    return True, {}


@contextmanager
def serving(server: OpsServer) -> Iterator[OpsServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _closed_by_server(conn: socket.socket, within: float) -> float:
    """Seconds until the server closed `conn` (recv returns b""), at most `within`."""
    conn.settimeout(within)
    started = time.monotonic()
    assert conn.recv(1) == b"", "the server answered instead of closing"
    return time.monotonic() - started


def test_loopback_by_default() -> None:
    with serving(OpsServer(CollectorRegistry(), _ready)) as server:
        assert server.host == "127.0.0.1"


def test_a_connection_that_says_nothing_is_closed_after_the_timeout() -> None:
    with (
        serving(OpsServer(CollectorRegistry(), _ready, timeout=0.5)) as server,
        socket.create_connection(("127.0.0.1", server.port)) as idle,
    ):
        idle.sendall(b"GET /metr")  # and then nothing
        assert _closed_by_server(idle, within=5.0) < 3.0


def test_connections_over_the_bound_are_closed_and_the_bound_frees_up() -> None:
    server = OpsServer(CollectorRegistry(), _ready, timeout=30.0, max_connections=2)
    with serving(server):
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            # The two idle ones hold both slots (the server accepts in the order clients
            # connected): a third is closed at once, long before the 30 s timeout.
            with socket.create_connection(("127.0.0.1", server.port)) as third:
                assert _closed_by_server(third, within=5.0) < 2.0
        finally:
            for conn in held:
                conn.close()
        wait_for(lambda: _live(server.port), 10, "a slot given back")


def _live(port: int) -> bool:
    try:
        with urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_health_details_are_redacted() -> None:
    def failing() -> tuple[bool, dict[str, Any]]:
        return False, {
            "sink.error": "could not connect to postgresql://top:hunter2@db:5432/top",
            "kafka": {"sasl.password": "hunter2", "error": "password=hunter2 refused"},
        }

    with serving(OpsServer(CollectorRegistry(), failing)) as server:
        try:
            urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
            raise AssertionError("a failing check answered 200")
        except HTTPError as exc:
            assert exc.code == 503
            body = exc.read().decode()
    assert "hunter2" not in body
    doc = json.loads(body)
    assert doc["healthy"] is False
    assert doc["sink.error"] == "could not connect to postgresql://top:***@db:5432/top"
