"""A site's coalescing window: the last change per key, and what the top layer already holds.

Every site topic has one `SiteQueue`: a window filling with what is read (one entry per key; the
highest site sequence wins, tombstones included) and the window closed before it, being applied
(double buffering). A closed window's offsets are committed once all of it is applied. A change
of the closed window goes out as the latest change of its key read so far: if the filling window
holds a later one, that one is applied in its place and leaves the filling window (late binding),
so a key is written once per turn, in its newest state, however long its turn took to come. The
`Applied` index remembers, per partition and key, the content fingerprint last applied, so a
change that would write what the top layer already holds is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from connector.kafka.group_consumer import Partition
from connector.records.fingerprint import change_fingerprint
from connector.records.model import HEARTBEAT_KIND, Change, Deletion, StatusRecord
from connector.top.dead_letters import DeadLetter

#: What the top layer shows of a change (`Pending.fingerprint`, what `Applied` holds).
fingerprint = change_fingerprint


def _is_heartbeat(change: Change) -> bool:
    return isinstance(change, StatusRecord) and change.kind == HEARTBEAT_KIND


@dataclass(slots=True)
class Pending:
    """One key's latest change in a window, the record it came from, and since when it waits."""

    change: Change
    partition: Partition
    offset: int
    value: bytes | None  #: the record's bytes, for a dead letter if the sink refuses it
    fingerprint: int
    since: float  #: monotonic time its first record in this window was read
    #: the change's key, built once: the window, the index and the loop look it up several times
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.change.key

    def rejected(self, reason: str) -> DeadLetter:
        """The dead letter for this change refused by the sink: its original record, and why."""
        topic, partition = self.partition
        key = self.key.encode()
        return DeadLetter(topic, partition, self.offset, key, self.value, "rejected", reason)


class Applied:
    """Per partition and key, the fingerprint of the change last applied. A deleted key is
    dropped (its memory would grow with every object a site ever had; a second tombstone of it
    is written again, which the sink's sequence check makes harmless). A partition revoked or
    lost is forgotten, so its next owner (or this member, assigned it again) writes its first
    change for every key."""

    def __init__(self) -> None:
        self._by_partition: dict[Partition, dict[str, int]] = {}

    def get(self, partition: Partition, key: str) -> int | None:
        known = self._by_partition.get(partition)
        return None if known is None else known.get(key)

    def remember(self, entries: Iterable[Pending]) -> None:
        for entry in entries:
            if isinstance(entry.change, Deletion):
                known = self._by_partition.get(entry.partition)
                if known is not None:
                    known.pop(entry.key, None)
            else:
                keys = self._by_partition.setdefault(entry.partition, {})
                keys[entry.key] = entry.fingerprint

    def forget(self, partitions: Iterable[Partition]) -> None:
        for tp in partitions:
            self._by_partition.pop(tp, None)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_partition.values())


@dataclass
class Window:
    """Records read from one site since the window opened, coalesced by key."""

    entries: dict[str, Pending] = field(default_factory=dict)
    #: the last offset read per partition: what is committed (+1) once the window is applied
    last: dict[Partition, int] = field(default_factory=dict)
    #: records read per partition
    records: dict[Partition, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    opened: float | None = None  #: monotonic time of its first record
    #: records that changed what their key shows (against the window's entry, or what was
    #: applied): writes that pushing every change would have made and a wider window saves
    churn: int = 0
    merged: int = 0  #: records superseded by a later record of the same key in this window
    #: monotonic time the last record that changed what an object shows was read (heartbeats
    #: aside): how long the site has been quiet
    last_churn: float | None = None
    #: the earliest and latest time a site observed one of its status records
    observed: tuple[float, float] | None = None
    #: per partition, where what Kafka held when the window was due to close ends: it closes
    #: once read to there (set by the consumer when first due)
    read_to: dict[Partition, int] | None = None

    def read(self, partition: Partition, offset: int, now: float) -> None:
        """Account for one record read; then `put` its change or `dead` its letter."""
        self.last[partition] = offset
        self.records[partition] = self.records.get(partition, 0) + 1
        if self.opened is None:
            self.opened = now

    def put(self, entry: Pending, applied: int | None) -> None:
        """Keep `entry` as its key's latest unless the entry held carries a higher sequence (a
        key's records are ordered within one partition only; after a repartition a key can come
        from two). `applied` is the fingerprint the top layer holds for the key, if known."""
        key = entry.key
        if isinstance(entry.change, StatusRecord):
            at = entry.change.observed_at.timestamp()
            first, last = self.observed or (at, at)
            self.observed = (min(first, at), max(last, at))
        old = self.entries.get(key)
        if old is None:
            # A key the top layer holds nothing known of (new, or first seen since this member
            # was assigned it) is no churn: waiting would not save its write.
            if applied is not None and entry.fingerprint != applied:
                self._churned(entry)
            self.entries[key] = entry
            return
        self.merged += 1
        if _newer(old.change, entry.change):
            return
        if entry.fingerprint != old.fingerprint:
            self._churned(entry)
        entry.since = old.since
        self.entries[key] = entry

    def _churned(self, entry: Pending) -> None:
        """`entry`, just read (its `since` is still its own read time), changed what its key
        shows."""
        self.churn += 1
        if not _is_heartbeat(entry.change):
            self.last_churn = entry.since

    def dead(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)

    @property
    def span(self) -> float:
        """Seconds of the site's own time its records cover (from their observed times)."""
        return 0.0 if self.observed is None else self.observed[1] - self.observed[0]

    @property
    def record_count(self) -> int:
        return sum(self.records.values())

    def next_offsets(self) -> Iterator[tuple[Partition, int]]:
        """Per partition read, the next offset to read once the window is applied."""
        for tp, last in self.last.items():
            yield tp, last + 1

    def drop(self, partitions: set[Partition]) -> None:
        """Forget what was read from `partitions` (revoked or lost)."""
        self.entries = {k: e for k, e in self.entries.items() if e.partition not in partitions}
        self.dead_letters = [d for d in self.dead_letters if d.partition_key not in partitions]
        for tp in partitions:
            self.last.pop(tp, None)
            self.records.pop(tp, None)
        if not self.records:
            self.opened = None


@dataclass
class Closed:
    """A closed window being applied: its changes in the order they go out, and a cursor."""

    window: Window
    changes: list[Pending]
    skipped: int  #: changes left out because the top layer already holds their content
    done: int = 0  #: changes applied so far
    #: the sink stored the window's offsets (with the call that applied its last changes)
    offsets_stored: bool = False

    @property
    def remaining(self) -> int:
        return len(self.changes) - self.done

    def take(self, n: int) -> list[Pending]:
        """The next `n` changes at most; `advance` once they are applied."""
        return self.changes[self.done : self.done + n]

    def advance(self, n: int) -> None:
        self.done += n

    def oldest(self) -> float | None:
        return min((e.since for e in self.changes[self.done :]), default=None)

    def drop(self, partitions: set[Partition]) -> None:
        self.window.drop(partitions)
        left = [e for e in self.changes[self.done :] if e.partition not in partitions]
        self.changes, self.done = left, 0


class SiteQueue:
    """One site's double buffer: a window filling while the one closed before it is applied."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.filling = Window()
        self.closed: Closed | None = None
        self.held = False  #: its partitions are paused because pending keys reached the cap
        #: seconds between the site's polls, from its heartbeats (None until one is read)
        self.poll_interval: float | None = None
        #: monotonic time the closed window's dead letters, or the storing of its offsets, may
        #: be tried again, after a failure
        self.retry_due = 0.0

    @property
    def pending(self) -> int:
        """Keys waiting: in the filling window and not yet applied from the closed one."""
        return len(self.filling.entries) + (self.closed.remaining if self.closed else 0)

    @property
    def busy(self) -> bool:
        """Something read is not yet committed: a window filling, or one being applied."""
        return self.filling.opened is not None or self.closed is not None

    def oldest(self) -> float | None:
        """Monotonic time the oldest pending change was read, or None."""
        first = next(iter(self.filling.entries.values()), None)
        times = [] if first is None else [first.since]
        if self.closed is not None:
            oldest = self.closed.oldest()
            if oldest is not None:
                times.append(oldest)
        return min(times, default=None)

    def close(self, applied: Applied, priority: Mapping[str, int]) -> Closed:
        """Close the filling window: what it holds that the top layer does not is applied
        next, heartbeats first, then kinds in `priority` order, else in the order read."""
        window, self.filling = self.filling, Window()
        changes = [
            e
            for e in window.entries.values()
            if _is_heartbeat(e.change) or e.fingerprint != applied.get(e.partition, e.key)
        ]
        skipped = len(window.entries) - len(changes)
        last = len(priority)
        changes.sort(
            key=lambda e: -1 if _is_heartbeat(e.change) else priority.get(e.change.kind, last)
        )
        self.closed = Closed(window, changes, skipped)
        return self.closed

    def take(self, n: int, applied: Applied) -> Taken:
        """The closed window's next `n` changes, each as the latest change of its key read so
        far, without those that would write what the top layer holds; `settle` them once they
        are applied (or left out).

        A later change the filling window holds replaces the closed one, and leaves the filling
        window once applied (`settle`): written now, it spares writing the older state first
        and this one after. Its offset is committed with the filling window, which is applied
        after this one, so nothing is committed before it is applied."""
        assert self.closed is not None
        part = self.closed.take(n)
        taken = Taken(len(part))
        for entry in part:
            key = entry.key
            later = self.filling.entries.get(key)
            if later is not None and not _newer(entry.change, later.change):
                later.since = min(later.since, entry.since)
                entry = later
                taken.replaced.append(key)
            if not _is_heartbeat(entry.change) and entry.fingerprint == applied.get(
                entry.partition, key
            ):
                taken.skipped += 1
                continue
            taken.entries.append(entry)
        return taken

    def settle(self, taken: Taken, refused: Mapping[str, str]) -> None:
        """`taken` was applied (or left out): past it in the closed window, and the later
        changes it used out of the filling window. The changes the sink `refused` (key ->
        why) become the closed window's dead letters."""
        assert self.closed is not None
        self.closed.advance(taken.count)
        for key in taken.replaced:
            self.filling.entries.pop(key, None)
        for entry in taken.entries:
            reason = refused.get(entry.key)
            if reason is not None:
                self.closed.window.dead(entry.rejected(reason))

    def drop(self, partitions: set[Partition]) -> None:
        self.filling.drop(partitions)
        if self.closed is not None:
            self.closed.drop(partitions)


@dataclass
class Taken:
    """What one sink call takes from a site's closed window."""

    count: int  #: changes of the closed window it stands for
    entries: list[Pending] = field(default_factory=list)  #: the changes to apply
    #: keys whose change was replaced by a later one from the filling window (a write saved)
    replaced: list[str] = field(default_factory=list)
    skipped: int = 0  #: changes left out: the top layer holds their content already


def _newer(a: Change, b: Change) -> bool:
    """True when `a` carries a higher site sequence than `b` (unknown sequences never win)."""
    return a.sequence is not None and b.sequence is not None and a.sequence > b.sequence


def changes_of(entries: Sequence[Pending]) -> list[Change]:
    return [e.change for e in entries]


def finishing(taken: Iterable[tuple[SiteQueue, Taken]]) -> list[Closed]:
    """The closed windows whose last changes `taken` (one sink call) holds, and with no dead
    letters: the sink may store their offsets with that call."""
    return [
        q.closed
        for q, part in taken
        if q.closed is not None
        and part.count == q.closed.remaining
        and not q.closed.window.dead_letters
    ]
