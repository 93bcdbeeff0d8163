"""The audit's comparison and repair (connector/top/audit.py) on a SQLite sink: each kind of
drift is found, repair fixes it, and repair never writes a record older than the row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks.sql import SqlSink, resource_status
from connector.sinks.sql_audit import site_rows
from connector.top.audit import compare, compare_listing, repair
from connector.top.periodic_audit import drift_marks, persistent

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(object_id: str, status: str, sequence: int) -> StatusRecord:
    return StatusRecord("east", "server", object_id, status, sequence, NOW, name=object_id)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SqlSink]:
    sink = SqlSink(f"sqlite:///{tmp_path / 'sink.sqlite'}")
    yield sink
    sink.close()


def test_each_drift_is_found_and_repaired(sink: SqlSink) -> None:
    topic: dict[str, Change] = {
        r.key: r for r in (record("a", "ACTIVE", 1), record("b", "ACTIVE", 2))
    }
    gone = Deletion("east", "server", "c", 3)
    topic[gone.key] = gone
    sink.apply([record("a", "ACTIVE", 1), record("c", "ACTIVE", 1), record("x", "ACTIVE", 1)])
    with sink.engine.begin() as conn:
        conn.execute(
            sa.update(resource_status).where(resource_status.c.id == "a").values(status="ERROR")
        )

    drift = compare("east", topic, site_rows(sink, "east"))
    assert drift.missing == ["east/server/b"]
    assert drift.different == ["east/server/a"]
    assert sorted(drift.extra) == ["east/server/c", "east/server/x"]
    assert repair(sink, drift) == 4
    assert not compare("east", topic, site_rows(sink, "east")).found


def test_repair_never_writes_over_a_newer_row(sink: SqlSink) -> None:
    sink.apply([record("a", "SHUTOFF", 5)])
    drift = compare("east", {"east/server/a": record("a", "ACTIVE", 4)}, site_rows(sink, "east"))
    assert drift.different == ["east/server/a"]
    assert repair(sink, drift) == 0
    assert site_rows(sink, "east")["east/server/a"]["status"] == "SHUTOFF"


def test_a_listing_of_the_site_is_compared_with_the_topic() -> None:
    topic: dict[str, Change] = {
        r.key: r for r in (record("a", "ACTIVE", 1), record("b", "ACTIVE", 2))
    }
    shown: dict[str, Any] = {"name": "a", "project_id": None, "details": {}}
    listed = {
        "east/server/a": {**shown, "status": "ERROR"},
        "east/server/n": {**shown, "name": "n", "status": "BUILD"},
    }
    drift = compare_listing("east", topic, listed)
    assert (drift.missing, drift.extra, drift.different) == (
        ["east/server/n"],
        ["east/server/b"],
        ["east/server/a"],
    )
    assert drift.lines()[0] == "site east, topic vs site APIs: 3 keys compared"


def test_periodic_audit_counts_only_drift_that_stays_against_the_same_record() -> None:
    # The topic's record for "a" is newer than the row: the loop has not applied it yet.
    first: dict[str, Change] = {"east/server/a": record("a", "SHUTOFF", 5)}
    rows: dict[str, dict[str, Any]] = {
        "east/server/a": {
            "status": "ACTIVE",
            "name": "a",
            "project_id": None,
            "details": {},
            "deleted": False,
            "sequence": 4,
        }
    }
    before = drift_marks(compare("east", first, rows), first)
    assert persistent(before, {}) == {"missing": 0, "extra": 0, "different": 0}, "first audit"
    assert persistent(before, before)["different"] == 1, "the same record still not applied"
    newer: dict[str, Change] = {"east/server/a": record("a", "ERROR", 6)}
    now = drift_marks(compare("east", newer, rows), newer)
    assert persistent(now, before)["different"] == 0, "a newer record is not the same drift"
    # A live row the topic holds nothing of drifts against no record, audit after audit.
    ghost = {"east/server/g": {**rows["east/server/a"], "name": "g"}}
    marks = drift_marks(compare("east", {}, ghost), {})
    assert marks == {"east/server/g": ("extra", None)}
    assert persistent(marks, marks)["extra"] == 1
