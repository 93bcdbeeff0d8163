"""Fakes of the site side for unit tests: a producer that keeps what it is given, a publisher
built on it, and an HTTP response as a service would send it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests
from prometheus_client import CollectorRegistry

from connector.records.codec import Codec
from connector.site.heartbeat import Health
from connector.site.publisher import Publisher
from connector.site.site_metrics import SiteMetrics


class FakeProducer:
    """Keeps produced messages; delivery reports are sent when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, dict[str, bytes]]] = []
        self._pending: list[tuple[str, Callable[..., None]]] = []

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        on_delivery: Callable[..., None],
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        # As the real Producer: the delivery report names the key as text.
        key = key.decode() if isinstance(key, bytes) else key or ""
        self.sent.append((key, value, dict(headers or {})))
        self._pending.append((key, on_delivery))

    def deliver(self, error: Any = None) -> None:
        pending, self._pending = self._pending, []
        for key, report in pending:
            report(key, error, 0, 0)


def make_publisher(
    last_sequence: int = 0,
    fingerprints: dict[str, dict[str, int]] | None = None,
    clock: Callable[[], float] = lambda: 0.0,
    metrics: SiteMetrics | None = None,
    kinds: Sequence[str] = ("server",),
    producer: FakeProducer | None = None,
) -> tuple[Publisher, FakeProducer, Health]:
    """Site s1's publisher to `producer` (a new FakeProducer by default), its health of `kinds`
    reporting into `metrics`."""
    metrics = metrics or SiteMetrics(CollectorRegistry(), "s1")
    health = Health(list(kinds), metrics)
    producer = producer or FakeProducer()
    publisher = Publisher(
        "s1",
        "cascade.status.s1",
        producer,
        Codec(),
        metrics,
        health,
        fingerprints or {},
        last_sequence,
        clock=clock,
    )
    return publisher, producer, health


def response(status: int, body: dict[str, Any]) -> requests.Response:
    made = requests.Response()
    made.status_code = status
    made.raw = io.BytesIO(json.dumps(body).encode())
    made.headers["Content-Type"] = "application/json"
    made.url = "http://site.test/"
    return made
