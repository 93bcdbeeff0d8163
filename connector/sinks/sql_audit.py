"""The SQL sink's side of `audit`: read a site's rows, and rewrite rows changed behind its back.

A row changed behind the sink's back (an UPDATE in the database) still carries the sequence of
the record it was written from, so the normal upsert (which needs a higher sequence) would not
touch it. `restore_rows` writes a record over a row whose sequence is at most the record's: the
sequence rule still holds (never older than the row), only "equal" is allowed too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from connector.records.model import HEARTBEAT_KIND, StatusRecord
from connector.sinks.sql import SqlSink, resource_status, status_row, translate_errors

#: What the audit compares of a row and a record: what the top layer shows.
SHOWN = ("status", "name", "project_id", "details", "deleted")


def site_rows(sink: SqlSink, site: str) -> dict[str, dict[str, Any]]:
    """Key -> the row's shown columns and sequence, for every row of `site` (heartbeats aside)."""
    rs = resource_status
    query = sa.select(rs.c.kind, rs.c.id, rs.c.sequence, *(rs.c[c] for c in SHOWN)).where(
        rs.c.site == site, rs.c.kind != HEARTBEAT_KIND
    )
    with translate_errors("cannot read the sink", sink.retry_after), sink.engine.connect() as conn:
        return {
            f"{site}/{r.kind}/{r.id}": {c: getattr(r, c) for c in (*SHOWN, "sequence")}
            for r in conn.execute(query)
        }


def restore_rows(sink: SqlSink, records: Sequence[StatusRecord]) -> int:
    """Write `records` over rows whose sequence is at most theirs; the rows written."""
    if not records:
        return 0
    rs = resource_status
    insert = postgresql.insert if sink.engine.dialect.name == "postgresql" else sqlite.insert
    ins = insert(rs)
    statement = ins.on_conflict_do_update(
        index_elements=[rs.c.site, rs.c.kind, rs.c.id],
        set_={c.name: ins.excluded[c.name] for c in rs.c if c.name not in ("site", "kind", "id")},
        where=sa.or_(rs.c.sequence.is_(None), ins.excluded.sequence >= rs.c.sequence),
    )
    now = datetime.now(UTC)
    rows = [status_row(r, now) for r in records]
    with (
        translate_errors("SQL sink repair failed", sink.retry_after),
        sink.engine.begin() as conn,
    ):
        conn.execution_options(preserve_rowcount=True)
        return int(conn.execute(statement, rows).rowcount)
