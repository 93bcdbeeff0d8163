"""The HTTP sink against a real HTTP server on loopback playing the top-layer service: the request
it sends, how it reads answers, retries, backpressure and refusals."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks import open_sink
from connector.sinks.base import SinkBackpressureError, SinkError
from connector.sinks.http import HttpSink

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(object_id: str, sequence: int, **kw: Any) -> StatusRecord:
    return StatusRecord("a", "server", object_id, "ACTIVE", sequence, T0, **kw)


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: the handler waits for this before answering (to make the client time out)
    hold: threading.Event | None = None
    #: "headers" or "body": the handler sends that part of its answer a byte at a time, each
    #: well within the client's timeout (a slow service or proxy; the answer never completes)
    trickle: str | None = None


@dataclass
class Service:
    """The scripted top-layer service: answers with `replies` in turn (the last one repeats)."""

    url: str
    replies: list[Reply]
    requests: list[tuple[dict[str, str], Any]] = field(default_factory=list)


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service(url="", replies=[Reply()])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            svc.requests.append((dict(self.headers), json.loads(self.rfile.read(length))))
            reply = svc.replies.pop(0) if len(svc.replies) > 1 else svc.replies[0]
            if reply.hold is not None:
                reply.hold.wait(timeout=10)
            if reply.trickle is not None:
                self.trickle(reply.trickle)
                return
            body = b"" if reply.body is None else json.dumps(reply.body).encode()
            if isinstance(reply.body, str):
                body = reply.body.encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def trickle(self, part: str) -> None:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
            if part == "body":
                head += b"\r\n"
            self.wfile.write(head)
            try:
                for _ in range(100):  # 10 s, then the handler gives up
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass  # the client hung up: what the test wants
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on `svc.requests` instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    svc.url = f"http://127.0.0.1:{server.server_address[1]}/status/batches"
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield svc
    for reply in svc.replies:
        if reply.hold is not None:
            reply.hold.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def sink_for(service: Service, **kw: Any) -> HttpSink:
    options: dict[str, Any] = {"timeout": 2.0, "retries": 2, "retry_after": 4.0, "backoff": 0.01}
    return HttpSink(service.url, **(options | kw))


def test_posts_the_batch_with_an_idempotency_key(service: Service) -> None:
    service.replies = [Reply(200, {"applied": 2})]
    sink = sink_for(service)
    beat = StatusRecord("a", "site", "a", "ok", 4, T0, details={"errors": 0})
    batch: list[Change] = [
        rec("vm1", 3, details={"power_state": 1}),
        Deletion("a", "server", "vm2", None),
        beat,
    ]
    assert sink.apply(batch).written == 2
    headers, body = service.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == body["batch_id"]
    ops = {c["key"]: c["op"] for c in body["changes"]}
    assert ops == {"a/server/vm1": "upsert", "a/server/vm2": "delete", "a/site/a": "heartbeat"}
    upsert = next(c for c in body["changes"] if c["op"] == "upsert")
    assert upsert["details"] == {"power_state": 1}
    assert upsert["observed_at"] == "2025-01-01T00:00:00+00:00"
    assert upsert["sequence"] == 3

    # The same batch again, in another order (a replay after a crash): the same key.
    sink.apply(list(reversed(batch)))
    assert service.requests[1][0]["Idempotency-Key"] == headers["Idempotency-Key"]
    sink.apply([rec("vm1", 4)])
    assert service.requests[2][0]["Idempotency-Key"] != headers["Idempotency-Key"]
    sink.close()


def test_reads_rejections_from_the_answer(service: Service) -> None:
    service.replies = [
        Reply(200, {"applied": 1, "rejected": [{"key": "a/server/b", "reason": "x"}]})
    ]
    result = sink_for(service).apply([rec("a", 1), rec("b", 1)])
    assert result.written == 1
    assert [(c.id, why) for c, why in result.rejected] == [("b", "x")]


def test_an_empty_2xx_answer_counts_the_batch_as_applied(service: Service) -> None:
    service.replies = [Reply(204)]
    assert sink_for(service).apply([rec("a", 1), rec("b", 1)]).written == 2


def test_a_change_json_cannot_hold_is_rejected_before_sending(service: Service) -> None:
    result = sink_for(service).apply([rec("a", 1), rec("nan", 1, details={"x": float("nan")})])
    assert [c.id for c, _ in result.rejected] == ["nan"]
    assert [c["id"] for c in service.requests[0][1]["changes"]] == ["a"]


def test_429_with_retry_after_seconds_is_backpressure(service: Service) -> None:
    service.replies = [Reply(429, "slow down", {"Retry-After": "7"})]
    with pytest.raises(SinkBackpressureError) as info:
        sink_for(service).apply([rec("a", 1)])
    assert info.value.retry_after == 7.0
    assert len(service.requests) == 1  # not retried here: the consumer pauses instead


def test_503_with_an_http_date_is_backpressure(service: Service) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    service.replies = [Reply(503, None, {"Retry-After": format_datetime(when, usegmt=True)})]
    with pytest.raises(SinkBackpressureError) as info:
        sink_for(service).apply([rec("a", 1)])
    assert 25 <= info.value.retry_after <= 31


def test_503_without_retry_after_uses_the_default(service: Service) -> None:
    service.replies = [Reply(503)]
    with pytest.raises(SinkBackpressureError) as info:
        sink_for(service).apply([rec("a", 1)])
    assert info.value.retry_after == 4.0


def test_5xx_is_retried_with_the_same_key_then_succeeds(service: Service) -> None:
    service.replies = [Reply(500), Reply(502), Reply(200, {"applied": 1})]
    assert sink_for(service).apply([rec("a", 1)]).written == 1
    keys = {headers["Idempotency-Key"] for headers, _ in service.requests}
    assert len(service.requests) == 3 and len(keys) == 1


def test_5xx_that_persists_becomes_backpressure(service: Service) -> None:
    service.replies = [Reply(500)]
    with pytest.raises(SinkBackpressureError, match="failed 3 times") as info:
        sink_for(service, retries=2).apply([rec("a", 1)])
    assert info.value.retry_after == 4.0
    assert len(service.requests) == 3


def test_a_timeout_is_retried_then_backpressure(service: Service) -> None:
    service.replies = [Reply(200, hold=threading.Event())]
    with pytest.raises(SinkBackpressureError, match=r"no complete answer within 0\.2 s"):
        sink_for(service, timeout=0.2, retries=1).apply([rec("a", 1)])
    assert len(service.requests) == 2


@pytest.mark.parametrize("part", ["headers", "body"])
def test_an_attempt_ends_at_its_timeout_however_the_answer_trickles(
    service: Service, part: str
) -> None:
    # requests' timeout bounds each read: a byte every 0.1 s held an attempt for the 10 s the
    # service went on.
    service.replies = [Reply(trickle=part)]
    started = time.monotonic()
    with pytest.raises(SinkBackpressureError, match=r"no complete answer within 0\.5 s"):
        sink_for(service, timeout=0.5, retries=0).apply([rec("a", 1)])
    assert time.monotonic() - started < 3.0


def test_an_unreachable_service_is_backpressure(service: Service) -> None:
    sink = HttpSink("http://127.0.0.1:9/", retries=1, backoff=0.01, retry_after=3.0)
    with pytest.raises(SinkBackpressureError, match="ConnectionError") as info:
        sink.apply([rec("a", 1)])
    assert info.value.retry_after == 3.0


def test_other_4xx_is_a_sink_error_naming_status_and_body(service: Service) -> None:
    service.replies = [Reply(400, "field 'status' is required")]
    with pytest.raises(SinkError) as info:
        sink_for(service).apply([rec("a", 1)])
    assert not isinstance(info.value, SinkBackpressureError)
    assert "HTTP 400" in str(info.value) and "field 'status' is required" in str(info.value)


def test_an_answer_outside_the_contract_is_a_sink_error(service: Service) -> None:
    service.replies = [Reply(200, {"rejected": [{"key": "a/server/other", "reason": "?"}]})]
    with pytest.raises(SinkError, match="not in the batch"):
        sink_for(service).apply([rec("a", 1)])
    service.replies = [Reply(200, "<html>ok</html>")]
    with pytest.raises(SinkError, match="non-JSON"):
        sink_for(service).apply([rec("a", 1)])


def test_open_sink_gives_an_http_sink_for_http_urls(service: Service) -> None:
    sink = open_sink(service.url)
    assert isinstance(sink, HttpSink)
    assert sink.apply([rec("a", 1)]).written == 1
