"""One batch in the making: the last change per key, the offsets it covers, its dead letters.

The batch knows, per partition, the first offset it holds (where to seek back when the sink asks
to slow down) and the last (what to commit once applied). Every record of a key lives on one
partition, so dropping a revoked partition's share of the batch never splits a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connector.kafka import TopicPartition
from connector.records.model import Change

Partition = tuple[str, int]


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be decoded or applied, with the reason, for the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str  #: a short, low-cardinality category (for metrics)
    detail: str  #: the full error message


@dataclass(frozen=True)
class _Entry:
    change: Change
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class Batch:
    """Records consumed since the last commit, coalesced by key."""

    _changes: dict[str, _Entry] = field(default_factory=dict)
    _first: dict[Partition, int] = field(default_factory=dict)
    _last: dict[Partition, int] = field(default_factory=dict)
    _records: dict[Partition, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    undecodable: int = 0  #: records that could not be decoded (they are among dead_letters)
    started: float | None = None  #: when the first record arrived (monotonic seconds)

    def add(self, topic: str, partition: int, offset: int, now: float) -> None:
        """Account for one consumed record; call `put` or `dead` for what it carried."""
        tp = (topic, partition)
        self._first.setdefault(tp, offset)
        self._last[tp] = offset
        self._records[tp] = self._records.get(tp, 0) + 1
        if self.started is None:
            self.started = now

    def put(
        self, change: Change, topic: str, partition: int, offset: int, value: bytes | None
    ) -> None:
        """Keep `change` (decoded from `value`) as the latest for its key, replacing an earlier
        one, unless that one carries a higher site sequence: a key's records are ordered within
        one partition only, and after a repartition a key can arrive from two."""
        old = self._changes.get(change.key)
        if old is not None and _newer(old.change, change):
            return
        self._changes[change.key] = _Entry(change, topic, partition, offset, value)

    def rejected(self, change: Change, reason: str) -> DeadLetter:
        """The dead letter for a change the sink refused: its original record, and why."""
        entry = self._changes[change.key]
        return DeadLetter(
            entry.topic,
            entry.partition,
            entry.offset,
            change.key.encode(),
            entry.value,
            "rejected",
            reason,
        )

    def undecodable_record(self, letter: DeadLetter) -> None:
        """A record that could not be decoded: it goes to the dead-letter topic."""
        self.dead_letters.append(letter)
        self.undecodable += 1

    def dead(self, letter: DeadLetter) -> None:
        """A decoded change the sink refused: it goes to the dead-letter topic too."""
        self.dead_letters.append(letter)

    @property
    def records(self) -> int:
        """Records consumed into this batch, before coalescing."""
        return sum(self._records.values())

    @property
    def changes(self) -> list[Change]:
        """The latest change per key: what the sink applies."""
        return [entry.change for entry in self._changes.values()]

    @property
    def coalesced(self) -> int:
        """Records made redundant by a later record of the same key in this batch."""
        return self.records - len(self._changes) - self.undecodable

    def __len__(self) -> int:
        return self.records

    def records_by_topic(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (topic, _partition), n in self._records.items():
            out[topic] = out.get(topic, 0) + n
        return out

    def commit_offsets(self) -> list[TopicPartition]:
        """The next offset to read per partition, once this batch is applied."""
        return [TopicPartition(t, p, last + 1) for (t, p), last in self._last.items()]

    def seek_offsets(self) -> list[TopicPartition]:
        """Where to read from again to see this batch once more."""
        return [TopicPartition(t, p, first) for (t, p), first in self._first.items()]

    def drop_partitions(self, partitions: list[TopicPartition]) -> None:
        """Forget everything read from `partitions` (revoked or lost: another member reads it)."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        if not gone & self._first.keys():
            return
        self._changes = {
            k: e for k, e in self._changes.items() if (e.topic, e.partition) not in gone
        }
        self.dead_letters = [d for d in self.dead_letters if (d.topic, d.partition) not in gone]
        self.undecodable = sum(1 for d in self.dead_letters if d.reason == "decode")
        for tp in gone:
            self._first.pop(tp, None)
            self._last.pop(tp, None)
            self._records.pop(tp, None)
        if not self._records:
            self.started = None


def _newer(a: Change, b: Change) -> bool:
    """True when `a` carries a higher site sequence than `b` (unknown sequences never win)."""
    return a.sequence is not None and b.sequence is not None and a.sequence > b.sequence
