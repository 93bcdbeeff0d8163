"""The top consumer's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from urllib.error import URLError
from urllib.request import urlopen

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from connector.errors import ConnectorError
from connector.records.model import Change, StatusRecord

PENDING = "cascade_consumer_site_pending_changes"
OLDEST_PENDING = "cascade_consumer_site_oldest_pending_seconds"


class _HeartbeatAges(Collector):
    """Per site, seconds since its last heartbeat reached the top layer, by the top's own clock
    (a site clock ahead or behind moves nothing), and apart from it how late that heartbeat came:
    the top's clock when applied minus the site's when stamped (the site clock's offset plus the
    delivery delay). Computed at scrape time; a site whose partitions this member no longer holds
    is forgotten, so only the member reading a site reports it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        #: site -> (the top's time its last heartbeat was applied, that heartbeat's delay)
        self._heard: dict[str, tuple[float, float]] = {}

    def heard(self, site: str, stamped: float) -> None:
        """A heartbeat of `site`, stamped `stamped` (POSIX seconds, the site's clock), applied."""
        now = self._clock()
        self._heard[site] = (now, now - stamped)

    def forget(self, site: str) -> None:
        self._heard.pop(site, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "cascade_site_heartbeat_age_seconds",
            "Seconds since the site's last heartbeat reached the top layer (the top's clock).",
            labels=["site"],
        )
        delay = GaugeMetricFamily(
            "cascade_site_heartbeat_delay_seconds",
            "How late the site's last heartbeat reached the top layer: the top's clock then "
            "minus the site's when it was stamped (clock offset plus delivery delay).",
            labels=["site"],
        )
        now = self._clock()
        for site, (applied, late) in sorted(self._heard.items()):
            age.add_metric([site], max(0.0, now - applied))
            delay.add_metric([site], late)
        yield age
        yield delay


class _Pending(Collector):
    """Per site: changes waiting (read, not yet applied) and the age of the oldest, from the
    loop's last snapshot (taken about once a second)."""

    def __init__(self) -> None:
        #: site -> (changes pending, wall-clock time the oldest was read, or None)
        self.sites: dict[str, tuple[int, float | None]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily(
            PENDING,
            "Changes read from the site and not yet applied (one per key).",
            labels=["site"],
        )
        oldest = GaugeMetricFamily(
            OLDEST_PENDING,
            "Seconds the site's oldest pending change has waited since it was read (0: none).",
            labels=["site"],
        )
        now = time.time()
        for site, (count, since) in sorted(self.sites.items()):
            pending.add_metric([site], count)
            oldest.add_metric([site], 0.0 if since is None else max(0.0, now - since))
        yield pending
        yield oldest


class ConsumerMetrics:
    """Counters and gauges of the top consumer."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.records = Counter(
            "cascade_consumer_records",
            "Records consumed from site topics.",
            ["site"],
            registry=registry,
        )
        self.coalesced = Counter(
            "cascade_consumer_coalesced_records",
            "Records superseded by a later record of the same key within a window.",
            registry=registry,
        )
        self.rows_applied = Counter(
            "cascade_consumer_rows_applied",
            "Rows (objects) changed in the sink.",
            registry=registry,
        )
        self.heartbeats_applied = Counter(
            "cascade_consumer_heartbeats_applied",
            "Site heartbeats handed to the sink (each one a row of site_heartbeat).",
            registry=registry,
        )
        self.batches = Counter(
            "cascade_consumer_batches",
            "Sink calls by outcome: applied, or backpressure (the sink asked to slow down).",
            ["outcome"],
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "cascade_consumer_batch_apply_seconds",
            "Time the sink took to apply one call.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.rate_limited_seconds = Counter(
            "cascade_consumer_rate_limited_seconds",
            "Seconds changes were ready but the rate limit held the next sink call.",
            registry=registry,
        )
        self.backpressure_seconds = Counter(
            "cascade_consumer_backpressure_seconds",
            "Seconds changes were ready but the sink had asked to slow down.",
            registry=registry,
        )
        self.stale = Counter(
            "cascade_consumer_stale_records",
            "Status records the sink did not write because it holds a higher sequence of their"
            " key (a key read from two partitions, or two groups writing one database).",
            registry=registry,
        )
        self.commit_errors = Counter(
            "cascade_consumer_commit_errors", "Offset commits that failed.", registry=registry
        )
        self.offsets_behind_log = Counter(
            "cascade_consumer_offsets_behind_log",
            "Partitions assigned whose offset stored in the sink is below the start of the log:"
            " records, tombstones among them, were removed since the sink stored it (a backup"
            " too old), so deletions may be missing from the top layer.",
            ["topic", "partition"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "cascade_consumer_dead_letters",
            "Records sent to the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.wrong_site = Counter(
            "cascade_consumer_wrong_site_records",
            "Records in a site's topic about another site, sent to the dead-letter topic.",
            ["topic"],
            registry=registry,
        )
        self.dead_letter_failures = Counter(
            "cascade_consumer_dead_letter_delivery_failures",
            "Deliveries of dead letters that failed (retried later; their window waits).",
            registry=registry,
        )
        self.rejoins = Counter(
            "cascade_consumer_rejoins",
            "Times this member, holding no partition for consumer.stall_after_seconds while "
            "partitions of the site topics went unread by every other member, rejoined the "
            "group with a new client.",
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
        self.window_keys = Gauge(
            "cascade_consumer_window_keys",
            "Keys in the windows filling now, over all sites.",
            registry=registry,
        )
        self.window_age = Gauge(
            "cascade_consumer_window_age_seconds",
            "Age of the oldest window filling now (0: none).",
            registry=registry,
        )
        self.windows = Counter(
            "cascade_consumer_windows",
            "Windows closed and applied.",
            registry=registry,
        )
        self.skipped = Counter(
            "cascade_consumer_skipped_unchanged",
            "Changes not written because the top layer already holds their content.",
            registry=registry,
        )
        self.max_rate = Gauge(
            "cascade_consumer_max_rate",
            "The rate limit (consumer.max_rate): changes per second to the sink at most; 0: none.",
            registry=registry,
        )
        self.heartbeats = _HeartbeatAges(clock)
        registry.register(self.heartbeats)
        self.pending = _Pending()
        registry.register(self.pending)

    def call_applied(self, written: int, stale: int, changes: Iterable[Change]) -> None:
        """A sink call applied `changes`, writing `written` rows and refusing `stale` records as
        older than what it holds: count it, and the heartbeats among them (heard now)."""
        self.batches.labels("applied").inc()
        self.rows_applied.inc(written)
        self.stale.inc(stale)
        for change in changes:
            if isinstance(change, StatusRecord) and change.is_heartbeat:
                self.heartbeats.heard(change.site, change.observed_at.timestamp())
                self.heartbeats_applied.inc()


def read_pending(urls: Iterable[str], timeout: float = 5.0) -> dict[str, tuple[int, float]]:
    """Per site, (changes pending, seconds the oldest has waited) as the consumers serving
    these /metrics URLs report it, summed over members (the oldest: the oldest of any)."""
    out: dict[str, tuple[int, float]] = {}
    for url in urls:
        try:
            with urlopen(url, timeout=timeout) as response:
                text = response.read().decode()
        except (URLError, OSError, ValueError) as exc:
            raise ConnectorError(f"cannot read the consumer's metrics at {url}: {exc}") from exc
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                site = sample.labels.get("site")
                if site is None or sample.name not in (PENDING, OLDEST_PENDING):
                    continue
                count, age = out.get(site, (0, 0.0))
                if sample.name == PENDING:
                    out[site] = (count + int(sample.value), age)
                else:
                    out[site] = (count, max(age, sample.value))
    return out
