"""`cascade-connector audit`: does the top layer still equal what a site published?

It reads the site's compacted topic whole (the last record per key is what the site says) and
the SQL sink's rows of the site, and reports the drift: keys `missing` at the top (a live
object with no row, or a row marked deleted), `extra` rows (live at the top, deleted or absent
in the topic) and `different` rows (both live, another status, name, project or details).
`repair` writes the fixes through the sink: missing rows and extra ones (as tombstones) by the
normal apply, rows changed behind the sink's back (same sequence as their record) by
`sql_audit.restore_rows`; neither ever writes a record older than the row.

`compare_listing` holds the topic against a fresh listing of the site's APIs (made on the site
side, connector/site/snapshot.py): drift there is the poller's to fix (its next resync), so it is
reported, never repaired from here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connector.codecs import codec_from_settings
from connector.config import Settings
from connector.kafka.reader import TopicReader
from connector.kafka.topics import site_topic
from connector.records.errors import DecodeError
from connector.records.messages import change_from_message
from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks.sql import SqlSink
from connector.sinks.sql_audit import SHOWN, restore_rows, site_rows

log = logging.getLogger(__name__)

#: Keys printed per kind of drift.
FIRST_KEYS = 5

#: What a listing of the site shows of an object, per key: SHOWN without `deleted`.
Listed = Mapping[str, Mapping[str, Any]]


@dataclass
class Drift:
    """How one side's view of a site differs from another's, and the changes that fix it."""

    site: str
    #: what was compared with what, for the report
    between: str = "top layer vs topic"
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    #: what repair writes: by the normal apply, and over rows changed behind the sink's back
    apply: list[Change] = field(default_factory=list)
    restore: list[StatusRecord] = field(default_factory=list)
    checked: int = 0  #: keys compared

    @property
    def found(self) -> bool:
        return bool(self.missing or self.extra or self.different)

    def lines(self) -> list[str]:
        out = [f"site {self.site}, {self.between}: {self.checked} keys compared"]
        for name, keys in (
            ("missing", self.missing),
            ("extra", self.extra),
            ("different", self.different),
        ):
            more = " ..." if len(keys) > FIRST_KEYS else ""
            shown = ", ".join(sorted(keys)[:FIRST_KEYS]) + more
            out.append(f"  {name}: {len(keys)}" + (f" ({shown})" if keys else ""))
        out.append("  drift found" if self.found else "  no drift")
        return out


def read_topic(settings: Settings, site: str) -> dict[str, Change]:
    """The last change per key in the site's topic (heartbeats aside). Records the consumer
    dead-letters (undecodable, or about another site) are logged and left out, as it leaves them."""
    codec = codec_from_settings(settings.kafka)
    reader = TopicReader(settings.kafka, site_topic(settings.kafka.topic_prefix, site), True)
    last: dict[str, Change] = {}
    try:
        for message in reader.messages(stop_at_end=True):
            try:
                change = change_from_message(message, codec, site)
            except DecodeError as exc:
                log.warning("left out a record the consumer dead-letters: %s", exc)
                continue
            if isinstance(change, StatusRecord) and change.is_heartbeat:
                continue
            held = last.get(change.key)
            if held is None or _not_older(change, held):
                last[change.key] = change
    finally:
        reader.close()
    return last


def compare(site: str, topic: Mapping[str, Change], rows: Mapping[str, Mapping[str, Any]]) -> Drift:
    """The drift of the sink's `rows` of `site` from its `topic`, and the changes that fix it."""
    drift = Drift(site, checked=len(set(topic) | set(rows)))
    for key, change in topic.items():
        row = rows.get(key)
        live = row is not None and not row["deleted"]
        if isinstance(change, Deletion):
            if live:
                drift.extra.append(key)
                drift.apply.append(change)
        elif row is None or not live:
            drift.missing.append(key)
            # A row marked deleted behind the sink's back carries the record's own sequence.
            (drift.restore if row is not None else drift.apply).append(change)
        elif shown(change) != {k: row[k] for k in SHOWN if k != "deleted"}:
            drift.different.append(key)
            drift.restore.append(change)
    for key, row in rows.items():
        if key not in topic and not row["deleted"]:
            # Compaction dropped the key's tombstone long ago, or it was never published.
            drift.extra.append(key)
            site_, kind, object_id = key.split("/", 2)
            drift.apply.append(Deletion(site_, kind, object_id, None))
    return drift


def compare_listing(site: str, topic: Mapping[str, Change], listed: Listed) -> Drift:
    """The drift of the site's `topic` from what a fresh listing of its APIs shows. An object
    that changed between the topic's read and the listing shows here too: drift that stays over
    two audits is real."""
    live = {k: c for k, c in topic.items() if isinstance(c, StatusRecord)}
    drift = Drift(site, "topic vs site APIs", checked=len(set(live) | set(listed)))
    drift.missing = [k for k in listed if k not in live]
    drift.extra = [k for k in live if k not in listed]
    drift.different = [k for k in listed if k in live and shown(live[k]) != dict(listed[k])]
    return drift


def audit_site(settings: Settings, sink: SqlSink, site: str) -> Drift:
    return compare(site, read_topic(settings, site), site_rows(sink, site))


def repair(sink: SqlSink, drift: Drift) -> int:
    """Write the fixes of `drift`; the rows changed. A row the sequence rules keep (it holds a
    higher sequence than the topic's record) is left as it is, and the next audit reports it."""
    written = restore_rows(sink, drift.restore)
    if drift.apply:
        result = sink.apply(drift.apply)
        written += result.written
        for change, reason in result.rejected:
            log.error("repair of %s refused: %s", change.key, reason)
    return written


def shown(record: StatusRecord) -> dict[str, Any]:
    """What the top layer shows of a record (compared by the audit)."""
    return {
        "status": record.status,
        "name": record.name,
        "project_id": record.project_id,
        "details": dict(record.details),
    }


def _not_older(a: Change, b: Change) -> bool:
    """A key's records are in order within a partition; after a repartition the sequence says."""
    return a.sequence is None or b.sequence is None or a.sequence >= b.sequence
