"""A site's window: last change per key (highest sequence wins, tombstones too), churn, what the
top layer already holds is skipped, kind priority, revoked partitions dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from connector.records.fingerprint import change_fingerprint
from connector.records.model import Change, Deletion, StatusRecord
from connector.top.dead_letters import DeadLetter
from connector.top.window import Applied, Pending, SiteQueue

NOW = datetime(2026, 1, 1, tzinfo=UTC)
P0, P1 = ("t", 0), ("t", 1)


def rec(obj: str, status: str, seq: int, kind: str = "server", **kw: Any) -> StatusRecord:
    return StatusRecord(
        site="a",
        kind=kind,
        id=obj,
        status=status,
        sequence=seq,
        observed_at=NOW + timedelta(seconds=seq),
        **kw,
    )


def put(q: SiteQueue, applied: Applied, change: Change, tp: tuple[str, int], offset: int) -> None:
    q.filling.read(tp, offset, now=float(offset))
    entry = Pending(change, tp, offset, b"raw", change_fingerprint(change), since=float(offset))
    q.filling.put(entry, applied.get(tp, change.key))


def test_fingerprint_is_the_content_not_the_sequence_or_times() -> None:
    a = rec("1", "ACTIVE", 1, details={"vm_state": "active", "volumes": ["v1"]})
    assert change_fingerprint(a) == change_fingerprint(
        rec("1", "ACTIVE", 9, details={"volumes": ["v1"], "vm_state": "active"})
    )
    assert change_fingerprint(a) != change_fingerprint(
        rec("1", "SHUTOFF", 1, details=dict(a.details))
    )
    assert change_fingerprint(a) != change_fingerprint(
        rec("1", "ACTIVE", 1, details={"vm_state": "stopped"})
    )
    assert change_fingerprint(a) != change_fingerprint(
        rec("1", "ACTIVE", 1, name="web", details=dict(a.details))
    )
    assert change_fingerprint(Deletion("a", "server", "1", 3)) == change_fingerprint(
        Deletion("a", "server", "1", 4)
    )
    assert change_fingerprint(Deletion("a", "server", "1", 3)) != change_fingerprint(a)


def test_last_change_per_key_wins_and_a_higher_sequence_is_never_replaced() -> None:
    q, applied = SiteQueue("a"), Applied()
    put(q, applied, rec("1", "BUILD", 1), P0, 10)
    put(q, applied, rec("2", "ACTIVE", 2), P0, 11)
    put(q, applied, rec("1", "ACTIVE", 3), P0, 12)
    put(q, applied, Deletion("a", "server", "2", 4), P0, 13)
    # After a repartition a key can come from two partitions: the higher sequence wins.
    put(q, applied, rec("1", "ERROR", 2), P1, 5)
    window = q.filling
    assert {k: getattr(e.change, "status", "deleted") for k, e in window.entries.items()} == {
        "a/server/1": "ACTIVE",
        "a/server/2": "deleted",
    }
    assert window.merged == 3
    assert window.last == {P0: 13, P1: 5}
    assert window.entries["a/server/1"].since == 10.0, "waits since its first record"
    assert window.span == 2.0  # observed times of sequences 1 to 3 (a tombstone has none)


def test_churn_counts_what_pushing_every_change_would_write() -> None:
    q, applied = SiteQueue("a"), Applied()
    put(q, applied, rec("1", "ACTIVE", 1), P0, 0)  # nothing known of it yet: no churn
    put(q, applied, rec("1", "SHUTOFF", 2), P0, 1)  # changed: churn
    put(q, applied, rec("1", "SHUTOFF", 3), P0, 2)  # same content again: none
    closed = q.close(applied, {})
    applied.remember(closed.take(closed.remaining))
    assert q.filling.churn == 0 and closed.window.churn == 1
    put(q, applied, rec("1", "ACTIVE", 4), P0, 3)  # differs from what was applied: churn
    put(q, applied, rec("2", "ACTIVE", 5), P0, 4)  # new key: none
    assert q.filling.churn == 1


def test_closing_skips_what_the_top_layer_holds_but_never_a_heartbeat() -> None:
    q, applied = SiteQueue("a"), Applied()
    beat = rec("a", "ok", 1, kind="site")
    for i, change in enumerate([rec("1", "ACTIVE", 2), rec("2", "ACTIVE", 3), beat]):
        put(q, applied, change, P0, i)
    first = q.close(applied, {})
    applied.remember(first.take(first.remaining))
    first.advance(first.remaining)
    q.closed = None
    # A storm that ends where it began, one real change, and the same heartbeat again.
    for i, change in enumerate(
        [
            rec("1", "SHUTOFF", 4),
            rec("1", "ACTIVE", 5),
            rec("2", "ERROR", 6),
            rec("a", "ok", 7, kind="site"),
        ]
    ):
        put(q, applied, change, P0, 10 + i)
    second = q.close(applied, {})
    assert [e.change.key for e in second.changes] == ["a/site/a", "a/server/2"]
    assert second.skipped == 1


def test_kinds_go_out_in_priority_order_heartbeats_first() -> None:
    q, applied = SiteQueue("a"), Applied()
    changes = [
        rec("p1", "ACTIVE", 1, kind="port"),
        rec("v1", "in-use", 2, kind="volume"),
        rec("s1", "ACTIVE", 3),
        rec("a", "ok", 4, kind="site"),
        rec("p2", "ACTIVE", 5, kind="port"),
    ]
    for i, change in enumerate(changes):
        put(q, applied, change, P0, i)
    closed = q.close(applied, {"server": 0, "port": 1})
    assert [e.change.id for e in closed.changes] == ["a", "s1", "p1", "p2", "v1"]


def test_a_revoked_partition_is_dropped_from_both_windows_and_forgotten() -> None:
    q, applied = SiteQueue("a"), Applied()
    put(q, applied, rec("1", "ACTIVE", 1), P0, 0)
    put(q, applied, rec("2", "ACTIVE", 2), P1, 0)
    closed = q.close(applied, {})
    applied.remember(closed.take(1))
    closed.advance(1)
    put(q, applied, rec("3", "ACTIVE", 3), P1, 1)
    q.filling.read(P1, 2, now=2.0)
    q.filling.dead(DeadLetter("t", 1, 2, b"k", b"junk", "decode", "bad"))
    assert q.pending == 2
    q.drop({P1})
    applied.forget({P1})
    assert q.pending == 0 and not q.filling.entries and not q.filling.dead_letters
    assert q.filling.opened is None
    assert closed.window.last == {P0: 0}
    assert applied.get(P0, "a/server/1") is not None and len(applied) == 1


def test_a_closed_change_goes_out_as_the_latest_of_its_key_read_since() -> None:
    q, applied = SiteQueue("a"), Applied()
    put(q, applied, rec("1", "ACTIVE", 1), P0, 0)
    put(q, applied, rec("2", "ACTIVE", 2), P0, 1)
    put(q, applied, rec("3", "ACTIVE", 3), P0, 2)
    closed = q.close(applied, {})
    applied.remember(closed.take(closed.remaining))
    closed.advance(closed.remaining)
    q.closed = None
    # A storm: every key flaps; the first flap is in the closed window when the rest is read.
    for i, (obj, status) in enumerate([("1", "ERROR"), ("2", "SHUTOFF"), ("3", "ERROR")]):
        put(q, applied, rec(obj, status, 10 + i), P0, 10 + i)
    q.close(applied, {})
    put(q, applied, rec("1", "ACTIVE", 20), P0, 20)  # back where it was: nothing to write
    put(q, applied, rec("2", "ERROR", 21), P0, 21)  # changed again: written once, as ERROR
    first = q.take(3, applied)
    assert first.count == 3 and sorted(first.replaced) == ["a/server/1", "a/server/2"]
    assert first.skipped == 1
    assert {e.change.key: getattr(e.change, "status", None) for e in first.entries} == {
        "a/server/2": "ERROR",
        "a/server/3": "ERROR",
    }
    assert first.entries[0].offset == 21, "the later record, committed with the filling window"
    # A sink asking to slow down: nothing settled, the same call can be taken again.
    assert [e.offset for e in q.take(3, applied).entries] == [21, 12]
    q.settle(first, {})
    applied.remember(first.entries)
    assert q.closed is not None and q.closed.remaining == 0
    assert q.filling.entries == {}, "what went out early is not written again"
    assert q.filling.last == {P0: 21}, "yet its offsets are committed with the filling window"


def test_late_binding_never_takes_a_lower_sequence() -> None:
    q, applied = SiteQueue("a"), Applied()
    put(q, applied, rec("1", "ERROR", 5), P0, 0)
    q.close(applied, {})
    put(q, applied, rec("1", "ACTIVE", 3), P1, 0)  # from another partition, older
    taken = q.take(1, applied)
    assert taken.replaced == [] and taken.entries[0].change.sequence == 5


def test_the_last_change_of_an_object_is_when_the_site_was_last_seen_changing() -> None:
    q, applied = SiteQueue("a"), Applied()
    put(q, applied, rec("1", "ACTIVE", 1), P0, 0)
    put(q, applied, rec("a", "ok", 2, kind="site", details={"poll.interval": 2.0}), P0, 1)
    closed = q.close(applied, {})
    applied.remember(closed.take(2))
    q.closed = None
    put(q, applied, rec("1", "ERROR", 3), P0, 5)
    put(q, applied, rec("1", "ERROR", 4), P0, 6)  # the same content again: no change
    # A heartbeat whose details differ is churn (a write), but no sign of the site changing.
    put(q, applied, rec("a", "degraded", 5, kind="site", details={"poll.interval": 2.0}), P0, 7)
    assert q.filling.churn == 2 and q.filling.last_churn == 5.0


def test_a_deleted_key_leaves_the_applied_index() -> None:
    applied = Applied()
    for i in range(1000):
        created = rec(str(i), "ACTIVE", 2 * i)
        deleted = Deletion("a", "server", str(i), 2 * i + 1)
        for change in (created, deleted):
            applied.remember([Pending(change, P0, i, b"raw", change_fingerprint(change), 0.0)])
    assert len(applied) == 0
    # Re-created after its deletion, a key is remembered (and skipped) again.
    again = rec("7", "ACTIVE", 5000)
    applied.remember([Pending(again, P0, 5000, b"raw", change_fingerprint(again), 0.0)])
    assert applied.get(P0, again.key) == change_fingerprint(again) and len(applied) == 1
