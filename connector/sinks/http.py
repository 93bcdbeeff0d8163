"""The HTTP sink: POSTs each batch as JSON to the top-layer service, and reads its answer.

It owns the wire contract with that service (docs/sinks.md has it in full):

- Request: `POST <url>` with `{"batch_id": ..., "changes": [...]}` and an `Idempotency-Key` header.
  The key is a hash of the batch's content, so the same batch retried (also after a crash and a
  replay from Kafka) carries the same key and the service can answer it without applying it twice.
- 2xx: applied; an optional JSON body `{"applied": N, "rejected": [{"key": K, "reason": R}]}` says
  how many objects changed and which changes were refused for good.
- 429 or 503: the service is busy; SinkBackpressureError with its Retry-After (seconds or an HTTP
  date), so the consumer pauses. Connection errors, timeouts and other 5xx are retried here with
  exponential backoff and jitter, then become SinkBackpressureError too. An attempt ends at
  `timeout` seconds in all (connect, request, answer), however the service trickles its answer;
  all attempts and their backoff keep within `apply_timeout`, and a stopping consumer interrupts
  the backoff.
- Any other status: SinkError naming the status and the start of the body.
- A site's availability changes (online, degraded, offline) come as calls of their own,
  `{"batch_id": ..., "site_states": [...]}`, with the same answers and retries.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from connector.records.model import Change, Deletion
from connector.redact import redact_text, redact_url
from connector.sinks.base import (
    ApplyResult,
    Progress,
    SinkBackpressureError,
    SinkError,
    SiteAvailability,
    SitePartition,
)

#: Statuses that mean "slow down" and are handed to the consumer at once, without retrying here.
BACKPRESSURE_STATUSES = frozenset({429, 503})
#: Characters of a refusing response's body quoted in the error.
_BODY_EXCERPT = 300
#: A Retry-After longer than this is read as this: a service asking for hours would otherwise
#: stall the consumer without a word.
MAX_RETRY_AFTER = 600.0
#: A Retry-After shorter than this (0, a date already past) is read as this: taken at its word,
#: the consumer asked again at once, in a tight loop, for as long as the service was busy.
MIN_RETRY_AFTER = 1.0


def change_json(change: Change) -> dict[str, Any]:
    """One change as the service receives it: `op` is upsert, delete or heartbeat."""
    if isinstance(change, Deletion):
        return {
            "op": "delete",
            "key": change.key,
            "site": change.site,
            "kind": change.kind,
            "id": change.id,
            "sequence": change.sequence,
        }
    return {
        "op": "heartbeat" if change.is_heartbeat else "upsert",
        "key": change.key,
        "site": change.site,
        "kind": change.kind,
        "id": change.id,
        "name": change.name,
        "project_id": change.project_id,
        "status": change.status,
        "details": dict(change.details),
        "source_updated_at": _iso(change.source_updated_at),
        "observed_at": _iso(change.observed_at),
        "revision": change.revision,
        "sequence": change.sequence,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def idempotency_key(changes: Sequence[dict[str, Any]]) -> str:
    """A SHA-256 over the canonical JSON of the changes sorted by key: same batch, same key."""
    canonical = json.dumps(
        sorted(changes, key=lambda c: str(c["key"])), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_retry_after(value: str | None, default: float, now: datetime | None = None) -> float:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), within
    [MIN_RETRY_AFTER, MAX_RETRY_AFTER]; `default` when absent or unreadable."""
    if value is None:
        return default
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, seconds))


class _Attempt:
    """One POST's deadline: when it passes, the connection the POST runs on is shut down.

    requests' timeout bounds each wait on the socket, not the attempt: a service that trickled
    its answer (a byte within each timeout) held the attempt, and the consumer with it, for as
    long as it went on. The connection classes below tell the attempt of this thread which
    connection it runs on.
    """

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._done = False
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Attempt:
        _Attempt._current.attempt = self
        self._timer.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        with self._lock:
            # A connection going back to the pool must not be shut down by a late timer.
            self._done = True
        _Attempt._current.attempt = None

    @classmethod
    def runs_on(cls, connection: HTTPConnection) -> None:
        """`connection` carries this thread's attempt (if any): shut it down when it expires."""
        attempt: _Attempt | None = getattr(cls._current, "attempt", None)
        if attempt is None:
            return
        with attempt._lock:
            attempt._connection = connection
            expired = attempt.expired
        if expired:
            _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            connection = self._connection
        if connection is not None:
            _shut(connection)


def _shut(connection: HTTPConnection) -> None:
    """End what `connection` waits for: its reads see the end of the stream at once."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing waits on it
            sock.shutdown(socket.SHUT_RDWR)


class _Connection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _Attempt.runs_on(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _Attempt.runs_on(self)
        super().request(*args, **kwargs)


class _TlsConnection(_Connection, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TlsPool(HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


_POOLS = {"http": _Pool, "https": _TlsPool}


class _Adapter(HTTPAdapter):
    """requests' adapter on connections an attempt's deadline can end (also through an HTTP
    proxy; through a SOCKS proxy only requests' own timeout applies)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


class HttpSink:
    """A Sink that hands batches to the top-layer service over HTTP."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        retry_after: float = 5.0,
        backoff: float = 0.5,
        apply_timeout: float = 120.0,
    ) -> None:
        self.url = url
        #: the URL without user:password, for messages and logs
        self.safe_url = redact_url(url)
        self.timeout = timeout
        self.retries = retries
        self.retry_after = retry_after
        #: first backoff in seconds; doubles per attempt, with full jitter
        self.backoff = backoff
        #: seconds one `apply` may take, attempts and backoff included
        self.apply_timeout = apply_timeout
        self._interrupted = threading.Event()
        self._session = requests.Session()
        self._session.mount("http://", _Adapter())
        self._session.mount("https://", _Adapter())

    def stored_offsets(
        self, group: str, partitions: Collection[SitePartition]
    ) -> dict[SitePartition, int] | None:
        """None: the HTTP sink keeps no offsets."""
        return None

    def __repr__(self) -> str:
        return f"HttpSink({self.safe_url!r}, timeout={self.timeout}, retries={self.retries})"

    def apply(self, changes: Sequence[Change], progress: Progress | None = None) -> ApplyResult:
        """POST the batch; retry transient failures; map the answer onto an ApplyResult. The
        service keeps no offsets: `progress` is not sent (Kafka's commits say where reading
        resumes)."""
        body: list[dict[str, Any]] = []
        sendable: list[Change] = []
        rejected: list[tuple[Change, str]] = []
        for change in changes:
            item = change_json(change)
            try:
                json.dumps(item, allow_nan=False)
            except (TypeError, ValueError) as exc:
                rejected.append((change, f"not representable as JSON: {exc}"))
                continue
            body.append(item)
            sendable.append(change)
        if not body:
            return ApplyResult(written=0, rejected=rejected)
        result = self._result(self._deliver("changes", body, idempotency_key(body)), sendable)
        result.rejected[:0] = rejected
        return result

    def set_availability(self, states: Sequence[SiteAvailability]) -> None:
        """POST sites' availability changes as a call of their own: `{"batch_id": ...,
        "site_states": [{"site", "state", "since", "previous"}]}`; any 2xx is taken."""
        body: list[dict[str, Any]] = [
            {"site": s.site, "state": s.state, "since": s.since.isoformat(), "previous": s.previous}
            for s in states
        ]
        key = idempotency_key([{"key": item["site"], **item} for item in body])
        self._result(self._deliver("site_states", body, key), [])

    def _deliver(self, field: str, body: list[dict[str, Any]], key: str) -> requests.Response:
        """POST `{"batch_id": key, field: body}`, retrying transient failures within the
        budget; the response to act on (backpressure when every attempt failed)."""
        payload = json.dumps({"batch_id": key, field: body}, allow_nan=False)
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        deadline = time.monotonic() + self.apply_timeout
        attempt = 0
        while True:
            failure = self._post(payload, headers, timeout=min(self.timeout, self._left(deadline)))
            if isinstance(failure, requests.Response):
                return failure
            if attempt >= self.retries:
                raise SinkBackpressureError(
                    f"top-layer service at {self.safe_url} failed {attempt + 1} times, "
                    f"last: {failure}",
                    self.retry_after,
                )
            # The backoff ends early when the consumer stops; the next attempt then gives up.
            pause = random.uniform(0, self.backoff * 2**attempt)
            self._interrupted.wait(min(pause, max(0.0, deadline - time.monotonic())))
            attempt += 1

    def interrupt(self) -> None:
        """Stop retrying: the running (or next) apply raises backpressure before its next try."""
        self._interrupted.set()

    def _left(self, deadline: float) -> float:
        """Seconds left for the next attempt; backpressure when none are, or when interrupted."""
        if self._interrupted.is_set():
            raise SinkBackpressureError("HTTP sink apply interrupted: stopping", self.retry_after)
        left = deadline - time.monotonic()
        if left <= 0:
            raise SinkBackpressureError(
                f"top-layer service at {self.safe_url} did not take the batch within the "
                f"budget of {self.apply_timeout:g} s",
                self.retry_after,
            )
        return left

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def _post(
        self, payload: str, headers: dict[str, str], timeout: float
    ) -> requests.Response | str:
        """The response to act on, or why this attempt is worth retrying. The attempt ends at
        `timeout` seconds in all, answer read to its end included."""
        attempt = _Attempt(timeout)
        try:
            with attempt:
                response = self._session.post(
                    self.url,
                    data=payload.encode(),
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            if attempt.expired or isinstance(exc, requests.ReadTimeout):
                return f"no complete answer within {timeout:g} s"
            return redact_text(f"{type(exc).__name__}: {exc}")
        except requests.RequestException as exc:
            # A URL requests cannot use (no host, a bad port): no retry fixes it. Its message
            # may quote the URL, password and all.
            reason = redact_text(f"{type(exc).__name__}: {exc}")
            raise SinkError(f"cannot POST to {self.safe_url}: {reason}") from exc
        if response.status_code >= 500 and response.status_code not in BACKPRESSURE_STATUSES:
            return f"HTTP {response.status_code}"
        return response

    def _result(self, response: requests.Response, changes: Sequence[Change]) -> ApplyResult:
        status = response.status_code
        if status in BACKPRESSURE_STATUSES:
            wait = parse_retry_after(response.headers.get("Retry-After"), self.retry_after)
            raise SinkBackpressureError(f"top-layer service answered HTTP {status}", wait)
        if not 200 <= status < 300:
            excerpt = response.text[:_BODY_EXCERPT]
            raise SinkError(
                f"top-layer service at {self.safe_url} answered HTTP {status}: {excerpt}"
            )
        return _parse_answer(response, changes)


def _parse_answer(response: requests.Response, changes: Sequence[Change]) -> ApplyResult:
    """Read the optional `{"applied": N, "rejected": [...]}` body of a 2xx answer."""
    if not response.content.strip():
        return ApplyResult(written=len(changes))
    try:
        answer = response.json()
    except requests.JSONDecodeError as exc:
        raise SinkError(f"top-layer service answered {response.status_code} with non-JSON") from exc
    if not isinstance(answer, dict):
        raise SinkError(f"top-layer service answered a JSON {type(answer).__name__}, not an object")
    by_key = {c.key: c for c in changes}
    rejected: list[tuple[Change, str]] = []
    listed = answer.get("rejected") or []
    if not isinstance(listed, list):
        raise SinkError(f"top-layer service answered rejected={listed!r}, not a list")
    for item in listed:
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(key, str) or key not in by_key:
            raise SinkError(f"top-layer service rejected {item!r}, which is not in the batch")
        rejected.append((by_key[key], str(item.get("reason") or "no reason given")))
    applied = answer.get("applied", len(changes) - len(rejected))
    if not isinstance(applied, int) or isinstance(applied, bool) or applied < 0:
        raise SinkError(f"top-layer service answered applied={applied!r}, not a count")
    return ApplyResult(written=applied, rejected=rejected)
