"""`cascade-connector consume` ends within 10 s of SIGTERM whatever it is doing: held by the rate
limit, or in the HTTP sink's retries (a broker outage: tests/integration/test_chaos_live.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from connector.dev.chaos.harness import SinkRows, wait_for
from tests.support.top import consume_process

LIMIT = 10.0


def test_sigterm_while_held_by_the_rate_limit(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    sink = f"sqlite:///{tmp_path / 'top.sqlite'}"
    children = consume_process(
        kafka_bootstrap, unique_name, tmp_path, sink, "--max-rate", "5", "--batch-size", "100"
    )
    rows = SinkRows(sink)
    try:
        # Rows arrive five a second: the consumer is applying, and waits on the limit between.
        applied = wait_for(lambda: len(rows.statuses()) >= 5, 90, every=0.1)
        assert applied is not None, children.log_tail("consumer")
        took = children.terminate("consumer", 30)
        assert took is not None and took < LIMIT, children.log_tail("consumer")
        assert len(rows.statuses()) < 300, "the rate limit did not hold the consumer"
    finally:
        children.stop_all()
        rows.close()


@pytest.fixture
def failing_service() -> Iterator[tuple[str, list[float]]]:
    """A top-layer service that answers every POST with 500; the list counts the requests."""
    calls: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(1.0)
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/batches", calls
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_sigterm_during_http_sink_retries(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    failing_service: tuple[str, list[float]],
) -> None:
    url, calls = failing_service
    # Ten retries with backoff doubling from 0.5 s: minutes of retrying, unless interrupted.
    children = consume_process(
        kafka_bootstrap, unique_name, tmp_path, url, env={"CASCADE_SINK_RETRIES": "10"}
    )
    try:
        assert wait_for(lambda: len(calls) >= 3, 90, every=0.1) is not None, children.log_tail(
            "consumer"
        )
        took = children.terminate("consumer", 30)
        assert took is not None and took < LIMIT, children.log_tail("consumer")
    finally:
        children.stop_all()
