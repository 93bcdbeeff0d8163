"""`cascade-connector consume` into the HTTP sink: a top-layer service that answers 429 with
Retry-After makes the consumer pause, seek back and read the batch again; every change
arrives once, and the offsets are committed to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connector.records.model import StatusRecord
from tests.support.kafka import committed_offsets, create_topic, end_offsets, publish

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class TopLayer:
    """A top-layer service on loopback: refuses the first `busy` batches with 429."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.lock = threading.Lock()
        self.accepted: list[tuple[str, list[dict[str, Any]]]] = []
        self.refused: list[str] = []
        self.url = ""


@pytest.fixture
def top_layer() -> Iterator[TopLayer]:
    service = TopLayer(busy=2)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = self.headers["Idempotency-Key"]
            with service.lock:
                if service.busy:
                    service.busy -= 1
                    service.refused.append(key)
                    status, reply, headers = 429, b"", {"Retry-After": "1"}
                else:
                    service.accepted.append((key, body["changes"]))
                    status, reply, headers = 200, b"{}", {}
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            """The test asserts on what the service recorded."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.url = f"http://127.0.0.1:{server.server_address[1]}/status"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield service
    server.shutdown()


def test_http_backpressure_through_the_cli(
    kafka_bootstrap: str, unique_name: Callable[[str], str], top_layer: TopLayer
) -> None:
    prefix, group = unique_name("status"), unique_name("group")
    topic = f"{prefix}.west"
    create_topic(kafka_bootstrap, topic, partitions=2)
    publish(
        kafka_bootstrap,
        topic,
        (
            StatusRecord(
                site="west",
                kind="volume",
                id=f"vol-{i}",
                status="in-use",
                sequence=i + 1,
                observed_at=T0 + timedelta(seconds=i),
            )
            for i in range(1000)
        ),
    )
    env = {
        **os.environ,
        "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CASCADE_KAFKA_TOPIC_PREFIX": prefix,
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "connector",
            "consume",
            "--sink",
            top_layer.url,
            "--group",
            group,
            "--dead-letter-topic",
            unique_name("dlq"),
            "--batch-size",
            "400",
            "--until-idle",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(top_layer.refused) == 2
    assert "sink asked to slow down" in out.stderr
    # Every change arrived exactly once: nothing refused was lost or committed, nothing accepted
    # was sent twice.
    accepted_ids = [c["id"] for _key, changes in top_layer.accepted for c in changes]
    assert sorted(accepted_ids) == sorted(f"vol-{i}" for i in range(1000))
    assert committed_offsets(kafka_bootstrap, group, topic) == end_offsets(kafka_bootstrap, topic)
