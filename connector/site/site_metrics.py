"""The site poller's Prometheus metrics, registered on an injected registry.

One object holds every metric so the poller, the publisher and the runner share them; tests give
each poller a fresh registry. Names follow Prometheus conventions: `cascade_site_` prefix,
`_total` counters, `_seconds` durations and timestamps.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SiteMetrics:
    """Every metric of one site's poller; per-kind metrics carry `site` and `kind` labels."""

    def __init__(self, registry: CollectorRegistry, site: str) -> None:
        self.site = site
        self.registry = registry
        per_kind = ["site", "kind"]
        self.poll_seconds = Histogram(
            "cascade_site_poll_duration_seconds",
            "Duration of one poll of a kind (mode: incremental or resync).",
            [*per_kind, "mode"],
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.requests = Counter(
            "cascade_site_api_requests_total",
            "HTTP requests made to the site's APIs (including authentication).",
            per_kind,
            registry=registry,
        )
        self.response_bytes = Counter(
            "cascade_site_api_response_bytes_total",
            "Bytes of HTTP response bodies received from the site's APIs.",
            per_kind,
            registry=registry,
        )
        self.objects_seen = Counter(
            "cascade_site_objects_seen_total",
            "Objects returned by the site's listings.",
            per_kind,
            registry=registry,
        )
        self.published = Counter(
            "cascade_site_changes_published_total",
            "Records published because an object's status changed (or was new).",
            per_kind,
            registry=registry,
        )
        self.unchanged = Counter(
            "cascade_site_unchanged_suppressed_total",
            "Objects seen whose status had not changed, so nothing was published.",
            per_kind,
            registry=registry,
        )
        self.tombstones = Counter(
            "cascade_site_tombstones_total",
            "Tombstones published for deleted or vanished objects.",
            per_kind,
            registry=registry,
        )
        self.site_errors = Counter(
            "cascade_site_api_errors_total",
            "Failed polls of a kind (timeouts, 5xx, refused connections, auth failures).",
            per_kind,
            registry=registry,
        )
        self.last_good_poll = Gauge(
            "cascade_site_last_good_poll_timestamp_seconds",
            "Unix time of the start of the last successful poll of a kind.",
            per_kind,
            registry=registry,
        )
        self.produce_errors = Counter(
            "cascade_site_produce_errors_total",
            "Messages Kafka failed to deliver; their objects are sent again on the next poll.",
            ["site"],
            registry=registry,
        )
        self.kafka_errors = Counter(
            "cascade_site_kafka_errors_total",
            "Transient Kafka errors (unknown topic, no leader, timeouts, brokers down), retried.",
            ["site"],
            registry=registry,
        )
        self.unparseable = Counter(
            "cascade_site_unparseable_objects_total",
            "Listed objects skipped: a field could not be read (no id, a bad time, ...), or the "
            "record could not be encoded or produced.",
            per_kind,
            registry=registry,
        )
        self.held_back = Gauge(
            "cascade_site_tombstones_held_back",
            "Tombstones a resync held back because too many objects vanished at once.",
            per_kind,
            registry=registry,
        )
        self.deletion_sweeps = Counter(
            "cascade_site_deletion_sweeps_total",
            "Id listings made to find deleted objects (reason: count mismatch or schedule).",
            [*per_kind, "reason"],
            registry=registry,
        )
        self.clock_offset = Gauge(
            "cascade_site_clock_offset_seconds",
            "The site's clock minus the poller's, from the Date header of the site's answers.",
            per_kind,
            registry=registry,
        )
        self.heartbeats = Counter(
            "cascade_site_heartbeats_total",
            "Site heartbeat records published.",
            ["site"],
            registry=registry,
        )
        self.degraded = Gauge(
            "cascade_site_degraded",
            "1 while a kind's last poll failed, objects are unreadable, tombstones are held back, "
            "or Kafka fails, else 0.",
            ["site"],
            registry=registry,
        )
        self.lease_rejoins = Counter(
            "cascade_site_lease_rejoins_total",
            "Times a standby rejoined the lease group with a new client: its site topic was "
            "silent while Kafka answered and the lease had not come to it.",
            ["site"],
            registry=registry,
        )
        self.active = Gauge(
            "cascade_site_active",
            "1 while this instance holds the site's lease and publishes, 0 while it stands by.",
            ["site"],
            registry=registry,
        )
        self.sequence_epochs = Counter(
            "cascade_site_sequence_epochs_total",
            "Times the site sequence could not grow further (64 bits) and started again from "
            "the clock.",
            ["site"],
            registry=registry,
        )
        self.sequence = Gauge(
            "cascade_site_sequence",
            "The last per-site sequence number given to a record.",
            ["site"],
            registry=registry,
        )
