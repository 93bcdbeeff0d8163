"""The SQL sink against real databases (a SQLite file and a throwaway PostgreSQL): upserts only move
forward, replays never regress, deletions in both modes, heartbeats, rejections, error mapping,
consumer offsets stored in the batch's transaction."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from connector.dev.local_postgres import LocalPostgres
from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks.base import Progress, SinkBackpressureError, SinkError
from connector.sinks.sql import (
    OnDelete,
    SqlSink,
    resource_status,
    site_heartbeat,
    sqlalchemy_url,
)
from connector.sinks.sql_availability import VIEW

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(
    object_id: str, sequence: int, status: str = "ACTIVE", site: str = "a", **kw: Any
) -> StatusRecord:
    return StatusRecord(
        site=site,
        kind=kw.pop("kind", "server"),
        id=object_id,
        status=status,
        sequence=sequence,
        observed_at=T0 + timedelta(seconds=sequence % 10**6),
        **kw,
    )


def rows(sink: SqlSink) -> dict[str, tuple[Any, ...]]:
    """id -> (status, sequence, deleted) of every resource_status row."""
    with sink.engine.connect() as conn:
        result = conn.execute(sa.text("SELECT id, status, sequence, deleted FROM resource_status"))
        return {r.id: (r.status, r.sequence, bool(r.deleted)) for r in result}


@pytest.fixture(params=["mark", "delete"])
def sink(request: pytest.FixtureRequest, sql_url: str) -> Iterator[SqlSink]:
    on_delete: OnDelete = request.param
    s = SqlSink(sql_url, on_delete=on_delete, retry_after=0.5)
    yield s
    s.close()


@pytest.fixture
def mark_sink(sql_url: str) -> Iterator[SqlSink]:
    s = SqlSink(sql_url, on_delete="mark")
    yield s
    s.close()


@pytest.fixture
def delete_sink(sql_url: str) -> Iterator[SqlSink]:
    s = SqlSink(sql_url, on_delete="delete")
    yield s
    s.close()


def test_upsert_counts_only_rows_that_changed(sink: SqlSink) -> None:
    # 2500 rows: more than one page of SQLAlchemy's multi-row INSERT, so counting spans pages.
    batch = [rec(str(i), 10, details={"vm_state": "active", "n": i}) for i in range(2500)]
    assert sink.apply(batch).written == 2500
    assert sink.apply(batch).written == 0  # the same batch replayed writes nothing

    newer = [rec(str(i), 11 if i % 2 else 9, status="ERROR") for i in range(100)]
    assert sink.apply(newer).written == 50
    got = rows(sink)
    assert got["1"] == ("ERROR", 11, False)
    assert got["2"] == ("ACTIVE", 10, False)
    assert len(got) == 2500


def test_a_newer_change_showing_the_same_content_is_not_written(mark_sink: SqlSink) -> None:
    details = {"vm_state": "active", "attachments": ["v1"]}
    mark_sink.apply([rec("1", 10, details=details, name="web"), rec("2", 10, details=details)])
    # Newer, same status, name, project and details: nothing to write, the row keeps seq 10.
    assert mark_sink.apply([rec("1", 20, details=dict(details), name="web")]).written == 0
    # Any of them different: written.
    changed = [
        rec("1", 21, details={**details, "vm_state": "stopped"}, name="web"),
        rec("2", 21, details=details, name="renamed"),
    ]
    assert mark_sink.apply(changed).written == 2
    # A deleted row comes back even with the content it had.
    mark_sink.apply([Deletion("a", "server", "1", 30)])
    assert mark_sink.apply([rec("1", 31, details=details, name="web")]).written == 1
    assert rows(mark_sink) == {"1": ("ACTIVE", 31, False), "2": ("ACTIVE", 21, False)}


def test_all_columns_are_stored(sink: SqlSink) -> None:
    source = datetime(2024, 12, 31, 23, 0, tzinfo=UTC)
    r = rec(
        "vm1",
        7,
        name="web-1",
        project_id="p1",
        details={"power_state": 1, "attachments": ["v1", "v2"], "locked": False},
        source_updated_at=source,
        revision=3,
    )
    sink.apply([r])
    with sink.engine.connect() as conn:
        row = conn.execute(sa.select(resource_status)).mappings().one()
    assert row["name"] == "web-1" and row["project_id"] == "p1" and row["revision"] == 3
    details = row["details"]
    assert details == {"power_state": 1, "attachments": ["v1", "v2"], "locked": False}
    stored = row["source_updated_at"]
    assert stored.replace(tzinfo=stored.tzinfo or UTC) == source


def test_records_older_than_what_the_sink_holds_are_counted_not_written(sink: SqlSink) -> None:
    sink.apply([rec("1", 10, status="ACTIVE"), rec("2", 10, status="ACTIVE")])
    result = sink.apply(
        [
            rec("1", 5, status="ERROR"),  # older than the row: refused, and counted
            rec("2", 11, status="ACTIVE"),  # newer but unchanged: not written, not stale
            rec("3", 1, status="BUILD"),  # new
        ]
    )
    assert (result.written, result.stale) == (1, 1)
    assert rows(sink) == {
        "1": ("ACTIVE", 10, False),
        "2": ("ACTIVE", 10, False),
        "3": ("BUILD", 1, False),
    }
    # A batch written whole does not look.
    assert sink.apply([rec("4", 1)]).stale == 0


def test_replays_never_regress(sink: SqlSink) -> None:
    """A random history of updates and deletions, applied in coalesced batches, with crashes that
    seek back and replay: the final state always shows the latest change per key, and (marking
    deletions) no row is ever seen going back to an older sequence."""
    rnd = random.Random(6)
    log: list[Change] = []
    for seq in range(1, 1501):
        oid = str(rnd.randrange(150))
        if rnd.random() < 0.1:
            log.append(Deletion("a", "server", oid, seq))
        else:
            log.append(rec(oid, seq, status=rnd.choice(["ACTIVE", "ERROR", "BUILD"])))

    def batches(start: int) -> Iterator[list[Change]]:
        pos = start
        while pos < len(log):
            size = rnd.randrange(1, 120)
            latest: dict[str, Change] = {}
            for change in log[pos : pos + size]:
                latest[change.key] = change  # the consumer keeps the last record per key
            yield list(latest.values())
            pos += size

    seen: dict[str, int] = {}
    for start in [0, 700, 0, 1200, 300, 1499]:  # every start after the first is a replay
        for batch in batches(start):
            sink.apply(batch)
            if sink.on_delete == "mark":
                for oid, (_status, sequence, _deleted) in rows(sink).items():
                    assert sequence >= seen.get(oid, 0), f"{oid} went back to {sequence}"
                    seen[oid] = sequence
        expected: dict[str, Change] = {}
        for change in log:
            expected[change.id] = change
        got = rows(sink)
        for oid, last in expected.items():
            if isinstance(last, Deletion):
                if sink.on_delete == "mark":
                    assert got[oid][1:] == (last.sequence, True)
                else:
                    assert oid not in got
            else:
                # A newer change showing what the row already shows is not written, so the row
                # may keep the sequence of an earlier change of the same content.
                status, sequence, deleted = got[oid]
                assert (status, deleted) == (last.status, False)
                assert sequence <= last.sequence


def test_mark_keeps_a_deleted_row_that_older_updates_cannot_revive(mark_sink: SqlSink) -> None:
    mark_sink.apply([rec("vm1", 5), rec("vm2", 5)])
    result = mark_sink.apply([Deletion("a", "server", "vm1", 6), Deletion("a", "server", "new", 3)])
    assert result.written == 2  # the unknown key gets a marked row, to guard against replays
    assert mark_sink.apply([rec("vm1", 5), rec("new", 2)]).written == 0
    assert mark_sink.apply([Deletion("a", "server", "vm1", 6)]).written == 0
    assert rows(mark_sink)["vm1"] == ("ACTIVE", 6, True)
    assert rows(mark_sink)["new"] == (None, 3, True)
    # A deletion as new as the row's update wins (nothing follows a deletion) ...
    assert mark_sink.apply([Deletion("a", "server", "vm2", 5)]).written == 1
    # ... and a newer update brings the object back (a re-created object with the same id).
    assert mark_sink.apply([rec("vm1", 7, status="BUILD")]).written == 1
    assert rows(mark_sink)["vm1"] == ("BUILD", 7, False)


def test_a_row_deleted_without_sequence_takes_the_next_deletions_sequence(
    mark_sink: SqlSink,
) -> None:
    assert mark_sink.apply([Deletion("a", "server", "ghost", None)]).written == 1
    assert mark_sink.apply([Deletion("a", "server", "ghost", 100)]).written == 1
    assert mark_sink.apply([rec("ghost", 50)]).written == 0, "an older update revived the row"
    assert rows(mark_sink)["ghost"] == (None, 100, True)


def test_a_missing_database_is_a_sink_error_not_backpressure(
    postgres_server: LocalPostgres,
) -> None:
    missing = postgres_server.url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(SinkError) as caught:
        SqlSink(missing)
    assert not isinstance(caught.value, SinkBackpressureError)
    assert "no_such_database" in str(caught.value)


def test_mark_applies_a_deletion_without_sequence_unconditionally(mark_sink: SqlSink) -> None:
    mark_sink.apply([rec("vm1", 9)])
    assert mark_sink.apply([Deletion("a", "server", "vm1", None)]).written == 1
    assert rows(mark_sink)["vm1"] == ("ACTIVE", 9, True)  # keeps the row's sequence as a guard
    assert mark_sink.apply([rec("vm1", 8)]).written == 0


def test_delete_removes_the_row_unless_it_is_newer(delete_sink: SqlSink) -> None:
    delete_sink.apply([rec("vm1", 5), rec("vm2", 9), rec("vm3", 1)])
    result = delete_sink.apply(
        [
            Deletion("a", "server", "vm1", 6),
            Deletion("a", "server", "vm2", 8),  # older than the row: the object came back since
            Deletion("a", "server", "vm3", None),
            Deletion("a", "server", "absent", 4),
        ]
    )
    assert result.written == 2
    assert set(rows(delete_sink)) == {"vm2"}


def test_heartbeats_go_to_site_heartbeat(sink: SqlSink) -> None:
    def beat(sequence: int, status: str) -> StatusRecord:
        return rec("a", sequence, status=status, kind="site", details={"errors": 0})

    assert sink.apply([beat(3, "ok"), rec("vm1", 2)]).written == 2
    assert sink.apply([beat(2, "degraded")]).written == 0
    assert sink.apply([beat(4, "degraded")]).written == 1
    with sink.engine.connect() as conn:
        hb = conn.execute(sa.select(site_heartbeat)).mappings().all()
    assert [(h["site"], h["status"], h["sequence"]) for h in hb] == [("a", "degraded", 4)]
    assert hb[0]["details"] == {"errors": 0}
    assert set(rows(sink)) == {"vm1"}


def test_unstorable_records_are_rejected_and_the_rest_applied(sink: SqlSink) -> None:
    bad = {
        "long": rec("long", 1, name="n" * 256),
        "nul": rec("nul", 1, status="ACT\x00IVE"),
        "nan": rec("nan", 1, details={"load": float("nan")}),
        "nul_detail": rec("nul_detail", 1, details={"host": "a\x00b"}),
        "naive": StatusRecord("a", "server", "naive", "ACTIVE", 1, datetime(2025, 1, 1)),
        "huge": rec("huge", 2**63),
    }
    # A backslash and "u0000" as text is no NUL, though its JSON holds what a NUL's would.
    escaped = rec("escaped", 1, details={"note": "\\u0000"})
    result = sink.apply([rec("good", 1), escaped, *bad.values()])
    assert result.written == 2
    reasons = {change.id: reason for change, reason in result.rejected}
    assert set(reasons) == set(bad)
    assert "limit is 255" in reasons["long"]
    assert "NUL" in reasons["nul"]
    assert "details['host'] contains a NUL" in reasons["nul_detail"]
    assert "JSON" in reasons["nan"]
    assert "time zone" in reasons["naive"]
    assert "64-bit" in reasons["huge"]
    assert set(rows(sink)) == {"good", "escaped"}


def test_a_key_twice_in_one_batch_is_refused(sink: SqlSink) -> None:
    with pytest.raises(SinkError, match="more than once"):
        sink.apply([rec("vm1", 1), Deletion("a", "server", "vm1", 2)])
    assert rows(sink) == {}


def test_a_broken_schema_is_a_sink_error_not_backpressure(sink: SqlSink) -> None:
    with sink.engine.begin() as conn:
        # The availability view reads the column: both databases refuse to drop it under it.
        conn.execute(sa.text(f"DROP VIEW {VIEW}"))
        conn.execute(sa.text("ALTER TABLE resource_status DROP COLUMN status"))
    with pytest.raises(SinkError) as info:
        sink.apply([rec("vm1", 1)])
    assert not isinstance(info.value, SinkBackpressureError)


def test_offsets_are_stored_with_the_batch_per_group_and_partition(sink: SqlSink) -> None:
    asked = [("t", 0), ("t", 1), ("t", 2), ("u", 0)]
    result = sink.apply([rec("vm1", 1)], Progress("g1", {("t", 0): 5, ("t", 1): 3}))
    assert result.progress_stored
    assert sink.stored_offsets("g1", asked) == {("t", 0): 5, ("t", 1): 3}
    assert sink.stored_offsets("g2", asked) == {}, "another group's are its own"
    # On their own, and the last written wins (what is read after a restore goes over it).
    assert sink.apply([], Progress("g1", {("t", 0): 2, ("u", 0): 7})).progress_stored
    assert sink.stored_offsets("g1", asked) == {("t", 0): 2, ("t", 1): 3, ("u", 0): 7}
    assert rows(sink) == {"vm1": ("ACTIVE", 1, False)}


def test_offsets_are_not_stored_with_a_batch_that_rejects_or_fails(sink: SqlSink) -> None:
    progress = Progress("g", {("t", 0): 9})
    result = sink.apply([rec("good", 1), rec("nul", 1, status="N\x00")], progress)
    assert [change.id for change, _why in result.rejected] == ["nul"]
    assert not result.progress_stored, "a dead letter comes before reading moves past it"
    assert sink.stored_offsets("g", [("t", 0)]) == {}
    with sink.engine.begin() as conn:
        conn.execute(sa.text(f"DROP VIEW {VIEW}"))
        conn.execute(sa.text("ALTER TABLE resource_status DROP COLUMN status"))
    with pytest.raises(SinkError):
        sink.apply([rec("vm1", 2)], progress)
    assert sink.stored_offsets("g", [("t", 0)]) == {}, "rolled back with the batch"


def test_a_locked_table_is_backpressure(postgres_database: str) -> None:
    # A lock held elsewhere that outlasts lock_timeout fails with SQLSTATE 55P03, which retries.
    url = postgres_database + "?options=-c%20lock_timeout%3D200"
    sink = SqlSink(url, retry_after=2.5)
    holder = sa.create_engine(sqlalchemy_url(postgres_database))
    try:
        with holder.begin() as conn:
            conn.execute(sa.text("LOCK TABLE resource_status IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(SinkBackpressureError) as info:
                sink.apply([rec("vm1", 1)])
        assert info.value.retry_after == 2.5
        assert sink.apply([rec("vm1", 1)]).written == 1  # and the retry goes through
    finally:
        holder.dispose()
        sink.close()


def test_a_locked_sqlite_file_is_backpressure(tmp_path: Any) -> None:
    path = tmp_path / "locked.sqlite"
    sink = SqlSink(f"sqlite:///{path}?timeout=0.2")
    holder = sa.create_engine(f"sqlite:///{path}")
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
            with pytest.raises(SinkBackpressureError, match="locked"):
                sink.apply([rec("vm1", 1)])
            conn.exec_driver_sql("ROLLBACK")
        assert sink.apply([rec("vm1", 1)]).written == 1
    finally:
        holder.dispose()
        sink.close()


def test_a_server_that_went_away_is_backpressure() -> None:
    with LocalPostgres() as server:
        sink = SqlSink(server.url)
        assert sink.apply([rec("vm1", 1)]).written == 1
    try:
        with pytest.raises(SinkBackpressureError):
            sink.apply([rec("vm1", 2)])
    finally:
        sink.close()


def test_members_starting_together_create_the_tables_once(postgres_database: str) -> None:
    # Several members of a fresh group against an empty database: each creates the tables it
    # finds missing, at the same moment. None may fail on the others' CREATE TABLE.
    members = 8
    barrier = threading.Barrier(members)
    failures: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            SqlSink(postgres_database).close()
        except BaseException as exc:  # collected for the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(members)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    sink = SqlSink(postgres_database)
    try:
        sink.apply([rec("vm-1", 1)], Progress("g", {("t", 0): 1}))
        assert rows(sink) == {"vm-1": ("ACTIVE", 1, False)}
        assert sink.stored_offsets("g", [("t", 0)]) == {("t", 0): 1}
    finally:
        sink.close()
