"""The `status` report: what an SQL sink holds, per site, kind and status, how fresh each
site's heartbeat is, and (when the consumers' metrics are given) what waits for each site.

A site whose last heartbeat is older than `stale_after` seconds, or that has objects but never sent
a heartbeat, is stale: its poller is down or cannot reach Kafka, so "no changes" from it means
nothing. Each site's availability as the top consumer judged it (online, degraded, offline:
connector/top/availability.py), since when, and how many of its objects read UNKNOWN for it
come from the `site_availability` table. It reads the tables the SQL sink writes and never
changes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from connector.sinks.base import SinkError
from connector.sinks.sql import create_engine, resource_status, site_heartbeat, translate_errors
from connector.sinks.sql_availability import OFFLINE, site_availability

#: The status shown for rows a tombstone marked deleted (`on_delete = "mark"`).
DELETED = "(deleted)"


@dataclass(frozen=True)
class ObjectCount:
    """How many objects of one site and kind have one status."""

    site: str
    kind: str
    status: str
    count: int


@dataclass(frozen=True)
class SiteHealth:
    """A site's latest heartbeat; `observed_at` is None when it never sent one."""

    site: str
    status: str | None
    observed_at: datetime | None
    age_seconds: float | None
    stale: bool
    #: as the top consumer judged it: online, degraded, offline; None: never judged
    availability: str | None = None
    availability_since: datetime | None = None
    unknown: int = 0  #: objects that read UNKNOWN (the site is offline)


@dataclass(frozen=True)
class StatusReport:
    """Everything `cascade-connector status` prints."""

    counts: list[ObjectCount]
    sites: list[SiteHealth]
    stale_after: float
    #: per site, (changes pending in the consumers, seconds the oldest has waited); None: unknown
    pending: dict[str, tuple[int, float]] | None = None

    @property
    def stale_sites(self) -> list[str]:
        return [s.site for s in self.sites if s.stale]

    def render(self) -> str:
        """Two plain-text tables: object counts, then site heartbeats."""
        if not self.counts and not self.sites:
            return "no objects and no heartbeats yet"
        lines = _table(
            ("SITE", "KIND", "STATUS", "OBJECTS"),
            [(c.site, c.kind, c.status, str(c.count)) for c in self.counts],
        )
        lines.append("")
        header: tuple[str, ...] = (
            "SITE",
            "HEARTBEAT",
            "AGE",
            "STATE",
            "AVAILABILITY",
            "SINCE",
            "UNKNOWN",
        )
        rows: list[tuple[str, ...]] = [
            (
                s.site,
                s.status or "-",
                f"{s.age_seconds:.1f} s" if s.age_seconds is not None else "-",
                _state(s, self.stale_after),
                s.availability or "-",
                s.availability_since.isoformat(timespec="seconds") if s.availability_since else "-",
                f"{s.unknown:,}",
            )
            for s in self.sites
        ]
        if self.pending is not None:
            header += ("PENDING", "OLDEST PENDING")
            rows = [(*row, *_pending(self.pending.get(row[0]))) for row in rows]
        lines += _table(header, rows)
        return "\n".join(line.rstrip() for line in lines)


def _pending(pending: tuple[int, float] | None) -> tuple[str, str]:
    count, age = pending or (0, 0.0)
    return f"{count:,}", f"{age:.1f} s" if count else "-"


def _state(site: SiteHealth, stale_after: float) -> str:
    if site.observed_at is None:
        return "STALE (no heartbeat)"
    return f"STALE (> {stale_after:g} s)" if site.stale else "fresh"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]


def read_status(
    url: str,
    site: str | None = None,
    stale_after: float = 30.0,
    now: datetime | None = None,
    pending: dict[str, tuple[int, float]] | None = None,
) -> StatusReport:
    """Read the report from the SQL sink at `url`, for one `site` or all of them; `pending`
    (from the consumers' metrics) adds what waits for each site.

    Raises SinkError for an HTTP sink (the top-layer service holds that data), a missing SQLite
    file, or a database that cannot be read.
    """
    scheme = url.partition(":")[0].lower()
    if scheme in ("http", "https"):
        raise SinkError("status reads an SQL sink; an HTTP sink's data is in the top-layer service")
    if scheme == "sqlite":
        path = sa.make_url(url).database
        if path and not Path(path).exists():
            raise SinkError(f"no SQLite sink database at {path}")
    now = now or datetime.now(UTC)
    engine = create_engine(url)
    try:
        with translate_errors("cannot read the sink", retry_after=0.0), engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            counts = _counts(conn, site) if resource_status.name in tables else []
            beats = _heartbeats(conn, site) if site_heartbeat.name in tables else {}
            judged = _availability(conn) if site_availability.name in tables else {}
    finally:
        engine.dispose()
    sites = sorted({c.site for c in counts} | set(beats) | set(judged) | set(pending or {}))
    if site is not None:
        sites = [s for s in sites if s == site]
    health = []
    for name in sites:
        status, observed_at = beats.get(name, (None, None))
        age = (now - observed_at).total_seconds() if observed_at is not None else None
        stale = age is None or age > stale_after
        state, since = judged.get(name, (None, None))
        unknown = (
            sum(c.count for c in counts if c.site == name and c.status != DELETED)
            if state == OFFLINE
            else 0
        )
        health.append(SiteHealth(name, status, observed_at, age, stale, state, since, unknown))
    return StatusReport(counts=counts, sites=health, stale_after=stale_after, pending=pending)


def _counts(conn: sa.Connection, site: str | None) -> list[ObjectCount]:
    rs = resource_status
    status = sa.case((rs.c.deleted, DELETED), else_=sa.func.coalesce(rs.c.status, "-"))
    query = (
        sa.select(rs.c.site, rs.c.kind, status.label("status"), sa.func.count().label("n"))
        .group_by(rs.c.site, rs.c.kind, status)
        .order_by(rs.c.site, rs.c.kind, status)
    )
    if site is not None:
        query = query.where(rs.c.site == site)
    return [ObjectCount(r.site, r.kind, r.status, r.n) for r in conn.execute(query)]


def _availability(conn: sa.Connection) -> dict[str, tuple[str, datetime]]:
    av = site_availability
    return {
        r.site: (r.state, _utc(r.since))
        for r in conn.execute(sa.select(av.c.site, av.c.state, av.c.since))
    }


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; the sink stored them in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _heartbeats(conn: sa.Connection, site: str | None) -> dict[str, tuple[str | None, datetime]]:
    hb = site_heartbeat
    query = sa.select(hb.c.site, hb.c.status, hb.c.observed_at)
    if site is not None:
        query = query.where(hb.c.site == site)
    return {r.site: (r.status, _utc(r.observed_at)) for r in conn.execute(query)}
