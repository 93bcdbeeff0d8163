"""The top consumer's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _HeartbeatAges(Collector):
    """Seconds since each site's last heartbeat was observed, computed at scrape time."""

    def __init__(self) -> None:
        self.observed: dict[str, float] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cascade_site_heartbeat_age_seconds",
            "Seconds since the site's poller last reported (as seen by the top consumer).",
            labels=["site"],
        )
        now = time.time()
        for site, observed in sorted(self.observed.items()):
            family.add_metric([site], now - observed)
        yield family


class ConsumerMetrics:
    """Counters and gauges of the top consumer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "cascade_consumer_records",
            "Records consumed from site topics.",
            ["site"],
            registry=registry,
        )
        self.coalesced = Counter(
            "cascade_consumer_coalesced_records",
            "Records superseded by a later record of the same key within a batch.",
            registry=registry,
        )
        self.rows_applied = Counter(
            "cascade_consumer_rows_applied",
            "Rows (objects) changed in the sink.",
            registry=registry,
        )
        self.batches = Counter(
            "cascade_consumer_batches",
            "Batches by outcome: applied, or backpressure (rolled back to retry).",
            ["outcome"],
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "cascade_consumer_batch_apply_seconds",
            "Time the sink took to apply one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.rate_limited_seconds = Counter(
            "cascade_consumer_rate_limited_seconds",
            "Seconds the partitions were paused by the rate limit.",
            registry=registry,
        )
        self.backpressure_seconds = Counter(
            "cascade_consumer_backpressure_seconds",
            "Seconds the partitions were paused because the sink asked to slow down.",
            registry=registry,
        )
        self.commit_errors = Counter(
            "cascade_consumer_commit_errors", "Offset commits that failed.", registry=registry
        )
        self.dead_letters = Counter(
            "cascade_consumer_dead_letters",
            "Records sent to the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.lag = Gauge(
            "cascade_consumer_lag_records",
            "Records between the committed offset and the log end, per partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.max_per_second = Gauge(
            "cascade_consumer_records_max_per_second",
            "The most records released to the sink within any one second so far.",
            registry=registry,
        )
        self.max_rate = Gauge(
            "cascade_consumer_max_rate",
            "The rate limit (consumer.max_rate): changes per second to the sink at most; 0: none.",
            registry=registry,
        )
        self.heartbeats = _HeartbeatAges()
        registry.register(self.heartbeats)
