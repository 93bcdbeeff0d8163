"""A batch: last change per key, offsets per partition, dropping a revoked partition."""

from __future__ import annotations

from datetime import UTC, datetime

from connector.records.model import Deletion, StatusRecord
from connector.top.batch import Batch, DeadLetter

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rec(obj: str, status: str, seq: int) -> StatusRecord:
    return StatusRecord(
        site="a", kind="server", id=obj, status=status, sequence=seq, observed_at=NOW
    )


def test_coalesces_by_key_and_tracks_offsets() -> None:
    batch = Batch()
    for offset, (obj, status) in enumerate([("1", "BUILD"), ("2", "ACTIVE"), ("1", "ACTIVE")]):
        batch.add("t", 0, 10 + offset, now=1.0)
        batch.put(rec(obj, status, offset), "t", 0, 10 + offset, b"raw")
    batch.add("t", 1, 5, now=2.0)
    batch.put(Deletion("a", "server", "3", 7), "t", 1, 5, None)
    batch.add("t", 1, 6, now=2.0)
    batch.undecodable_record(DeadLetter("t", 1, 6, b"k", b"junk", "decode", "bad magic"))

    assert len(batch) == 5
    assert {c.key: getattr(c, "status", "deleted") for c in batch.changes} == {
        "a/server/1": "ACTIVE",
        "a/server/2": "ACTIVE",
        "a/server/3": "deleted",
    }
    assert batch.coalesced == 1
    assert batch.started == 1.0
    assert {(tp.partition, tp.offset) for tp in batch.commit_offsets()} == {(0, 13), (1, 7)}
    assert {(tp.partition, tp.offset) for tp in batch.seek_offsets()} == {(0, 10), (1, 5)}


def test_drop_partition_removes_its_share() -> None:
    from confluent_kafka import TopicPartition

    batch = Batch()
    batch.add("t", 0, 1, now=1.0)
    batch.put(rec("1", "ACTIVE", 1), "t", 0, 1, b"x")
    batch.add("t", 1, 1, now=1.0)
    batch.put(rec("2", "ACTIVE", 2), "t", 1, 1, b"y")
    batch.drop_partitions([TopicPartition("t", 1)])
    assert [c.key for c in batch.changes] == ["a/server/1"]
    assert [(tp.partition, tp.offset) for tp in batch.commit_offsets()] == [(0, 2)]
    batch.drop_partitions([TopicPartition("t", 0)])
    assert len(batch) == 0 and batch.started is None


def test_rejected_change_keeps_its_original_record() -> None:
    batch = Batch()
    batch.add("t", 2, 42, now=1.0)
    change = rec("9", "ACTIVE", 3)
    batch.put(change, "t", 2, 42, b"original")
    letter = batch.rejected(change, "status too long")
    assert (letter.topic, letter.partition, letter.offset, letter.value) == (
        "t",
        2,
        42,
        b"original",
    )
    assert letter.reason == "rejected" and letter.detail == "status too long"


def test_rejected_changes_do_not_count_as_coalesced() -> None:
    batch = Batch()
    for i in range(5):
        batch.add("t", 0, i, now=1.0)
        batch.put(rec(str(i), "ACTIVE", i), "t", 0, i, b"x")
    batch.dead(batch.rejected(batch.changes[0], "refused"))
    assert batch.coalesced == 0


def test_a_key_from_two_partitions_keeps_the_higher_sequence() -> None:
    batch = Batch()
    batch.add("t", 1, 0, now=1.0)
    batch.put(rec("1", "ACTIVE", 9), "t", 1, 0, b"new")
    batch.add("t", 0, 0, now=1.0)
    batch.put(rec("1", "BUILD", 3), "t", 0, 0, b"old")
    assert [c.status for c in batch.changes if isinstance(c, StatusRecord)] == ["ACTIVE"]
    assert batch.coalesced == 1
