"""The poller's health per kind, and the site heartbeat record made from it.

Pollers report each poll's outcome here (and objects they skipped as unreadable, tombstones the
mass vanish guard holds back), the runner and the producer report Kafka trouble; the runner
turns the state into a heartbeat (kind `site`, id = the site name, status `ok` or `degraded`)
every few seconds and serves it on /healthz, so the top layer can tell "no changes" from
"site unreachable".
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from connector.records.model import DetailValue
from connector.site.site_metrics import SiteMetrics


@dataclass
class KindHealth:
    """What the last polls of one kind said."""

    last_good_poll: datetime | None = None
    error: str | None = None
    objects: int = 0
    failures: int = 0  #: consecutive failed polls
    #: listed objects the poller could not read (skipped), as of the latest listings
    unparseable: int = 0
    #: tombstones a resync held back (mass vanish guard) until the next resync agrees
    held_back: int = 0
    #: the site lists the poller's own projects only (no admin role): the site is seen in part
    unprivileged: bool = False


class Health:
    """Thread-safe health of one site's poller: per-kind poll outcomes and Kafka delivery errors."""

    def __init__(
        self,
        kinds: Iterable[str],
        metrics: SiteMetrics,
        poll_interval: float | None = None,
        heartbeat_interval: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        #: seconds between incremental polls, in the heartbeat (`poll.interval`): the top
        #: consumer tells from it when a storming site went quiet
        self._poll_interval = poll_interval
        #: seconds between heartbeats (`heartbeat.interval`): the top consumer counts a site
        #: offline after a few of them without a word
        self._heartbeat_interval = heartbeat_interval
        self._kinds = {kind: KindHealth() for kind in kinds}
        self._metrics = metrics
        self._produce_errors = 0
        self._produce_error: str | None = None
        self._produce_errors_seen = 0
        #: failed polls of every kind, and how many of them a heartbeat reported already
        self._poll_failures = 0
        self._poll_failures_seen = 0
        #: the last transient Kafka error (start-up, broker down), until Kafka answers again
        self._kafka_error: str | None = None
        #: what the last new sequence epoch said (degraded from then on: rows at the top may
        #: refuse this site's changes until an operator clears them)
        self._epoch: str | None = None

    def poll_ok(self, kind: str, started: datetime, objects: int) -> None:
        with self._lock:
            state = self._kinds[kind]
            state.last_good_poll, state.error, state.objects, state.failures = (
                started,
                None,
                objects,
                0,
            )
        labels = self._metrics.last_good_poll.labels(self._metrics.site, kind)
        labels.set(started.timestamp())
        self._update_gauge()

    def poll_failed(self, kind: str, error: str) -> int:
        """Record a failed poll; returns the number of consecutive failures."""
        with self._lock:
            state = self._kinds[kind]
            state.error = error
            state.failures += 1
            failures = state.failures
            self._poll_failures += 1
        self._metrics.site_errors.labels(self._metrics.site, kind).inc()
        self._update_gauge()
        return failures

    def delivery_failed(self, error: str) -> None:
        with self._lock:
            self._produce_errors += 1
            self._produce_error = error
        self._metrics.produce_errors.labels(self._metrics.site).inc()
        self._update_gauge()

    def set_unparseable(self, kind: str, count: int) -> None:
        """How many of the kind's listed objects the poller cannot read now."""
        with self._lock:
            self._kinds[kind].unparseable = count
        self._update_gauge()

    def set_held_back(self, kind: str, count: int) -> None:
        """How many tombstones the mass vanish guard holds back for the kind."""
        with self._lock:
            self._kinds[kind].held_back = count
        self._update_gauge()

    def set_unprivileged(self, kind: str, unprivileged: bool) -> None:
        """Whether the site shows the kind's objects of the poller's own projects only."""
        with self._lock:
            self._kinds[kind].unprivileged = unprivileged
        self._update_gauge()

    def new_epoch(self, what: str) -> None:
        """The site sequence started a new epoch (connector.site.publisher)."""
        with self._lock:
            self._epoch = what
        self._update_gauge()

    def kafka_failed(self, error: str) -> None:
        """A transient Kafka error: degraded until `kafka_ok`."""
        with self._lock:
            self._kafka_error = error
        self._metrics.kafka_errors.labels(self._metrics.site).inc()
        self._update_gauge()

    def kafka_ok(self) -> None:
        """Kafka answered (a topic step succeeded, a message was delivered)."""
        # Read without the lock first: this runs for every delivered message.
        if self._kafka_error is None:
            return
        with self._lock:
            self._kafka_error = None
        self._update_gauge()

    @property
    def produce_errors(self) -> int:
        with self._lock:
            return self._produce_errors

    def degraded(self) -> bool:
        """A kind's last poll failed, or a poll or a delivery failed since the last heartbeat
        (a site failing a third of its requests is degraded, even if each kind's last poll
        happened to succeed when the heartbeat was made)."""
        with self._lock:
            return self._degraded()

    def _degraded(self) -> bool:
        return (
            any(
                s.error is not None or s.unparseable or s.held_back or s.unprivileged
                for s in self._kinds.values()
            )
            or self._produce_errors > self._produce_errors_seen
            or self._poll_failures > self._poll_failures_seen
            or self._kafka_error is not None
            or self._epoch is not None
        )

    def _update_gauge(self) -> None:
        self._metrics.degraded.labels(self._metrics.site).set(1 if self.degraded() else 0)

    def heartbeat(self) -> tuple[str, dict[str, DetailValue]]:
        """(status, details) for the next heartbeat; delivery errors count once per heartbeat."""
        with self._lock:
            status = "degraded" if self._degraded() else "ok"
            self._produce_errors_seen = self._produce_errors
            self._poll_failures_seen = self._poll_failures
            details = self._details()
        self._update_gauge()
        return status, details

    def snapshot(self) -> tuple[bool, dict[str, DetailValue]]:
        """(healthy, details) for /healthz, without consuming delivery errors."""
        with self._lock:
            return not self._degraded(), self._details()

    def _details(self) -> dict[str, DetailValue]:
        details: dict[str, DetailValue] = {}
        for kind, state in self._kinds.items():
            good = state.last_good_poll
            details[f"{kind}.last_good_poll"] = None if good is None else good.isoformat()
            details[f"{kind}.error"] = state.error
            details[f"{kind}.objects"] = state.objects
            details[f"{kind}.unparseable"] = state.unparseable
            details[f"{kind}.held_back"] = state.held_back
            details[f"{kind}.partial"] = state.unprivileged
        details["produce.errors"] = self._produce_errors
        details["produce.error"] = self._produce_error
        details["kafka.error"] = self._kafka_error
        if self._epoch is not None:
            details["sequence.epoch"] = self._epoch
        if self._poll_interval is not None:
            details["poll.interval"] = self._poll_interval
        if self._heartbeat_interval is not None:
            details["heartbeat.interval"] = self._heartbeat_interval
        return details
