"""The consumer's periodic audit (`consumer.audit_interval_seconds`, off by default) as metrics.

Every interval a background thread audits, one after the other, the sites this member judges
(it reads their heartbeats, `Availability.sites`; so each site is audited by one member of the
group), exactly as `cascade-connector audit` does (connector/top/audit.py), on a sink of its
own (its own connections). It repairs nothing: repair is the operator's call (`audit --repair`).

A record the loop has read but not yet applied shows as drift for a moment. So a key counts as
drift only when the same drift of it, against the same record (its sequence), was found by the
audit before too: the loop had a whole interval to apply that record and did not. The gauge is
that persistent drift; a fresh site reads 0 until its second audit.

Reading a site's topic whole costs about what `audit` costs (the topic's bytes through the
decoder); at thousands of sites, set the interval to hours, not minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from connector.config import Settings
from connector.kafka.client import RepeatedErrors
from connector.records.model import Change
from connector.sinks.sql import SqlSink
from connector.sinks.sql_audit import site_rows
from connector.top.audit import Drift, compare, read_topic

log = logging.getLogger(__name__)

DRIFTS = ("missing", "extra", "different")

_ERRORS = RepeatedErrors(log)
#: Seconds a stop waits for an audit under way (reading a site topic from a broker that may not
#: answer): past them it is left to end with the process (a daemon thread), which must stop
#: within 10 s.
STOP_JOIN = 2.0

#: A key's drift, as what drifted and against which record: the kind of drift and the topic
#: record's sequence (None for a row the topic holds nothing of).
_Mark = tuple[str, int | None]


class AuditMetrics:
    """The periodic audit's metrics, registered on an injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.drift = Gauge(
            "cascade_audit_drift_keys",
            "Keys of the site whose top-layer row differs from the site topic's last record in "
            "two audits in a row (against the same record), by kind of drift.",
            ["site", "drift"],
            registry=registry,
        )
        self.completed = Gauge(
            "cascade_audit_last_completed_timestamp_seconds",
            "When the periodic audit of the site last completed (Unix time).",
            ["site"],
            registry=registry,
        )
        self.failures = Counter(
            "cascade_audit_failures",
            "Periodic audits of the site that could not complete (broker or sink unavailable).",
            ["site"],
            registry=registry,
        )


def drift_marks(drift: Drift, topic: Mapping[str, Change]) -> dict[str, _Mark]:
    """Each drifting key of `drift` with what drifted and the topic record it drifted from."""
    marks: dict[str, _Mark] = {}
    for name in DRIFTS:
        for key in getattr(drift, name):
            change = topic.get(key)
            marks[key] = (name, change.sequence if change is not None else None)
    return marks


def persistent(now: Mapping[str, _Mark], before: Mapping[str, _Mark]) -> dict[str, int]:
    """Keys per kind of drift that drift now as they did before (same drift, same record)."""
    counts = dict.fromkeys(DRIFTS, 0)
    for key, mark in now.items():
        if before.get(key) == mark:
            counts[mark[0]] += 1
    return counts


class PeriodicAudit:
    """The background audit; `start()` once, `stop()` at the end (joins the thread, within
    STOP_JOIN)."""

    def __init__(
        self,
        settings: Settings,
        sites: Callable[[], list[str]],
        metrics: AuditMetrics,
        interval: float,
        sink: SqlSink,
    ) -> None:
        self._settings = settings
        self._sites = sites
        self._metrics = metrics
        self._interval = interval
        self._sink = sink
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="periodic-audit", daemon=True)
        self._marks: dict[str, dict[str, _Mark]] = {}

    def __repr__(self) -> str:
        return f"PeriodicAudit(interval={self._interval}, sites={len(self._marks)})"

    def start(self) -> PeriodicAudit:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(STOP_JOIN)
        if self._thread.is_alive():
            log.warning(
                "an audit still under way after %.0f s: left to end with the process", STOP_JOIN
            )

    def audit(self, site: str) -> dict[str, int]:
        """Audit `site` once; its persistent drift per kind, also exported."""
        topic = read_topic(self._settings, site)
        drift = compare(site, topic, site_rows(self._sink, site))
        marks = drift_marks(drift, topic)
        counts = persistent(marks, self._marks.get(site, {}))
        self._marks[site] = marks
        for name, count in counts.items():
            self._metrics.drift.labels(site, name).set(count)
        self._metrics.completed.labels(site).set(time.time())
        if any(counts.values()):
            log.warning(
                "periodic audit: site %s drifts from its topic in two audits in a row "
                "(missing %d, extra %d, different %d); see `cascade-connector audit --site %s`",
                site,
                counts["missing"],
                counts["extra"],
                counts["different"],
                site,
            )
        return counts

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.round()

    def round(self) -> None:
        """Audit every site this member judges, once."""
        sites = self._sites()
        self._forget([s for s in self._marks if s not in sites])
        for site in sites:
            if self._stopping.is_set():
                return
            try:
                self.audit(site)
            except Exception as exc:  # a broker or sink outage: the next round tries again
                self._metrics.failures.labels(site).inc()
                _ERRORS.report(logging.WARNING, str(exc), f"periodic audit of {site} failed: ")

    def _forget(self, sites: list[str]) -> None:
        """Sites another member judges now: their gauges are that member's to export."""
        for site in sites:
            del self._marks[site]
            for name in DRIFTS:
                self._metrics.drift.remove(site, name)
            self._metrics.completed.remove(site)
