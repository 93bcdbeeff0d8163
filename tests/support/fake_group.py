"""Fakes of what the top consumer loop talks to, so its rules have unit tests with no broker: a
group member over in-memory partitions (`FakeGroupConsumer`, a `connector.top.group.
GroupConsumer`), a top layer (`FakeSink`) and a dead-letter topic (`FakeDeadLetters`); and
`top_consumer` to build a loop over them (tests/support/top.py runs it in a thread), and
`server` to make the changes they carry.

What the loop does is written to one `Journal` (sink calls, dead-letter deliveries, commits,
rebalances, in order), so a test can assert what came before what.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from connector.errors import KafkaError
from connector.kafka import OFFSET_BEGINNING, Message
from connector.kafka.group_consumer import AssignCallback, Partition, PartitionsCallback
from connector.records.codec import Codec
from connector.records.messages import change_from_message, to_message
from connector.records.model import Change, StatusRecord
from connector.sinks.base import ApplyResult, Progress, SinkBackpressureError, SiteAvailability
from connector.top.availability import Availability, AvailabilityMetrics, AvailabilityPolicy
from connector.top.closing import WindowPolicy
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.dead_letters import DeadLetter
from connector.top.loop import TopConsumer
from connector.top.offsets import ResumePolicy
from connector.top.rate import RateLimiter

#: How librdkafka says a read of committed offsets timed out.
TIMED_OUT = (
    "cannot read committed offsets: KafkaError{code=_TIMED_OUT,val=-185,"
    'str="Failed to get committed offsets: Local: Timed out"}'
)

#: The window policy of `top_consumer` unless a test gives one (`dataclasses.replace` it).
POLICY = WindowPolicy(call_size=100, wait=0.05, max_wait=1.0, max_pending_keys=1000)

#: Seconds a test waits for the loop to do what it is waited on for (a loaded machine is slow).
LOOP_TIMEOUT = 20.0


#: When the changes `server` makes were observed: this, plus their sequence in seconds.
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def server(obj: str, status: str, seq: int, site: str = "a") -> StatusRecord:
    """Server `obj` of `site` (whose topic is `site.<site>`) in `status`, at sequence `seq`."""
    observed = T0 + timedelta(seconds=seq)
    return StatusRecord(
        site=site, kind="server", id=obj, status=status, sequence=seq, observed_at=observed
    )


@dataclass(frozen=True)
class Event:
    """One thing the loop did: `what` ("apply", "offsets" (stored in the sink on their own),
    "refused", "dead letters", "undelivered", "commit", "commit failed", "assign", "started"
    (where the partitions assigned start), "revoke", "lost") and the detail of it."""

    what: str
    #: commits, offsets stored (with an apply, or on their own), where reading started: offsets
    partitions: dict[Partition, int] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)  #: sink calls
    letters: list[DeadLetter] = field(default_factory=list)  #: dead-letter deliveries
    during: str | None = None  #: the rebalance callback it happened in, if any
    at: float = field(default_factory=time.monotonic)  #: when


class Journal:
    """Every `Event`, in order; safe to read from the test's thread while the loop runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def add(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def events(self, *what: str) -> list[Event]:
        """The events so far (of the kinds `what`, if given)."""
        with self._lock:
            return [e for e in self._events if not what or e.what in what]

    def commits(self) -> list[dict[Partition, int]]:
        """The offsets of every commit that succeeded, in order."""
        return [e.partitions for e in self.events("commit")]


class FakeGroupConsumer:
    """The only member of a consumer group over in-memory partitions.

    `subscribe` assigns it every partition; `assign`, `revoke` and `lose` ask for a rebalance,
    served (as librdkafka serves them) by a later `consume`, once the member has read what was
    produced before the rebalance was asked for. A partition assigned is read from the group's
    committed offset (or its start). `hold` and `trigger_backpressure` pause partitions as the
    real consumer does. The first `commit_failures` commits fail, and the first `read_failures`
    reads of committed offsets time out (`reads` lists them all); a test may keep questions for
    the partitions' ends unanswered (`ends_answer`). The first `deaf` clients (the
    subscription's, then each `rejoin`'s) are given no partition, as a client stuck as
    librdkafka's have been; `rejoins` counts them. `close` revokes what is assigned. A
    partition assigned starts where `on_assign` says, if it says. Each record is stamped with
    when it was produced (`at`, POSIX seconds), for `first_offset_since`.
    """

    def __init__(
        self,
        partitions: Iterable[Partition],
        journal: Journal | None = None,
        committed: Mapping[Partition, int] | None = None,
        commit_failures: int = 0,
        read_failures: int = 0,
        deaf: int = 0,
        topic_retention: Mapping[str, float] | None = None,
    ) -> None:
        self.journal = journal or Journal()
        self.deaf = deaf
        self.rejoins = 0
        self.interrupted = False  #: whether the loop's stop interrupted its commits
        self.group_committed: dict[Partition, int] = dict(committed or {})
        self.commit_failures = commit_failures
        self.read_failures = read_failures
        #: every read of committed offsets: (monotonic time, partitions, timeout)
        self.reads: list[tuple[float, frozenset[Partition], float]] = []
        self.closed = False
        #: topic -> its own delete.retention.ms in seconds (`delete_retention`); a topic not
        #: here is one the broker tells nothing of
        self.topic_retention: dict[str, float] = dict(topic_retention or {})
        #: while a test keeps this clear, `stable_ends` gets no answer: it waits until the
        #: event is set, whatever its timeout (librdkafka's calls have been seen to wait past
        #: theirs); `ends_asked` lists the partitions of every question, as it is asked
        self.ends_answer = threading.Event()
        self.ends_answer.set()
        self.ends_asked: list[frozenset[Partition]] = []
        self._logs: dict[Partition, list[Message]] = {tp: [] for tp in partitions}
        self._stamps: dict[Partition, list[float]] = {tp: [] for tp in self._logs}
        self._wake = threading.Condition(threading.RLock())
        self._assigned: set[Partition] = set()
        #: the next offset to read of each partition assigned; known to `positions` only once
        #: the member read from it (`_read`), as librdkafka's
        self._positions: dict[Partition, int] = {}
        self._read_from: set[Partition] = set()
        self._held: set[Partition] = set()
        self._backoff: dict[Partition, float] = {}
        #: rebalances asked for: (what, partitions, the log ends to read first)
        self._rebalances: deque[tuple[str, list[Partition], dict[Partition, int]]] = deque()
        self._pattern = ""
        self._on_assign: AssignCallback | None = None
        self._callbacks: dict[str, PartitionsCallback] = {}
        self._during: str | None = None

    # What a test does.

    def produce(self, tp: Partition, change: Change, codec: Codec, at: float | None = None) -> int:
        """Append `change` (encoded with `codec`) to partition `tp`; its offset."""
        msg = to_message(change, codec)
        return self.produce_raw(tp, msg.key, msg.value, msg.headers, at)

    def produce_raw(
        self,
        tp: Partition,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        at: float | None = None,
    ) -> int:
        """Append a record of these bytes to partition `tp`, written `at` (default: now); its
        offset."""
        with self._wake:
            self._stamps[tp].append(time.time() if at is None else at)
            log = self._logs[tp]
            offset = len(log)
            topic, partition = tp
            wire: list[tuple[str, str | bytes | None]] = list(headers or [])
            log.append(
                Message(
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    key=key,
                    value=value,
                    headers=wire or None,
                )
            )
            self._wake.notify_all()
            return offset

    def assign(self, partitions: Collection[Partition]) -> None:
        self._rebalance("assign", partitions)

    def revoke(self, partitions: Collection[Partition]) -> None:
        self._rebalance("revoke", partitions)

    def lose(self, partitions: Collection[Partition]) -> None:
        self._rebalance("lost", partitions)

    def rebalanced(self) -> bool:
        """Every rebalance asked for is served."""
        with self._wake:
            return not self._rebalances

    def _rebalance(self, what: str, partitions: Collection[Partition]) -> None:
        with self._wake:
            ends = {tp: len(self._logs[tp]) for tp in self._assigned}
            self._rebalances.append((what, sorted(partitions), ends))
            self._wake.notify_all()

    # What the loop calls (connector.top.group.GroupConsumer).

    def subscribe(
        self,
        pattern: str,
        on_assign: AssignCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        self._pattern = pattern
        self._on_assign = on_assign
        self._callbacks = {"revoke": on_revoke, "lost": on_lost}
        self._join()

    def rejoin(self) -> None:
        with self._wake:
            self.rejoins += 1
            if self._assigned:
                self._serve("revoke", sorted(self._assigned))
            self._join()

    def _join(self) -> None:
        if self.deaf:
            self.deaf -= 1
            return
        self.assign(self.partitions_matching(self._pattern))

    def unserved(self, pattern: str, timeout: float = 10.0) -> list[Partition]:
        with self._wake:  # the only member: what it does not hold, nobody reads
            return [tp for tp in self.partitions_matching(pattern) if tp not in self._assigned]

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        with self._wake:
            now = time.monotonic()
            self._backoff = {tp: t for tp, t in self._backoff.items() if t > now}
            if self._rebalance_due():
                self._serve_rebalance()
                return []
            out = self._read(max(1, max_messages))
            if not out and timeout > 0:
                self._wake.wait(timeout)
            return out

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        with self._wake:
            if self.commit_failures:
                self.commit_failures -= 1
                self.journal.add(Event("commit failed", dict(offsets), during=self._during))
                raise KafkaError("commit failed: Broker: the fake group refuses it")
            self.group_committed.update(offsets)
            self.journal.add(Event("commit", dict(offsets), during=self._during))

    def interrupt(self) -> None:
        self.interrupted = True

    def committed(
        self, partitions: Collection[Partition], timeout: float = 30.0
    ) -> dict[Partition, int]:
        with self._wake:
            self.reads.append((time.monotonic(), frozenset(partitions), timeout))
            if self.read_failures:
                self.read_failures -= 1
                raise KafkaError(TIMED_OUT)
            return {tp: self.group_committed[tp] for tp in partitions if tp in self.group_committed}

    def positions(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        with self._wake:
            known = self._read_from & set(partitions)
            return {tp: self._positions[tp] for tp in known}

    def watermarks(
        self, topic: str, partition: int, cached: bool = False, timeout: float = 10.0
    ) -> tuple[int, int]:
        with self._wake:
            return 0, len(self._logs[(topic, partition)])

    def first_offset_since(
        self, topic: str, partition: int, timestamp_ms: int, timeout: float = 10.0
    ) -> int:
        with self._wake:
            stamps = self._stamps[(topic, partition)]
            return next(
                (i for i, at in enumerate(stamps) if at * 1000 >= timestamp_ms), len(stamps)
            )

    def delete_retention(self, topics: Collection[str], timeout: float = 10.0) -> dict[str, float]:
        return {t: self.topic_retention[t] for t in topics if t in self.topic_retention}

    def stable_ends(
        self, partitions: Collection[Partition], timeout: float = 10.0
    ) -> dict[Partition, int]:
        with self._wake:
            self.ends_asked.append(frozenset(partitions))
        self.ends_answer.wait()  # not holding the lock: the member's other calls go on
        with self._wake:
            return {tp: len(self._logs[tp]) for tp in partitions}

    def partitions_matching(self, pattern: str, timeout: float = 10.0) -> list[Partition]:
        return [tp for tp in self._logs if re.match(pattern, tp[0])]

    def hold(self, partitions: Collection[Partition]) -> None:
        with self._wake:
            self._held = set(partitions)

    def trigger_backpressure(self, seek_to: Mapping[Partition, int], resume_after: float) -> None:
        with self._wake:
            until = time.monotonic() + resume_after
            for tp, offset in seek_to.items():
                self._backoff[tp] = max(until, self._backoff.get(tp, until))
                self._positions[tp] = offset

    @property
    def paused(self) -> frozenset[Partition]:
        with self._wake:
            return frozenset((self._held | self._backoff.keys()) & self._assigned)

    def close(self) -> None:
        with self._wake:
            if self._assigned:
                self._serve("revoke", sorted(self._assigned))
            self.closed = True

    def _rebalance_due(self) -> bool:
        if not self._rebalances:
            return False
        _what, _partitions, ends = self._rebalances[0]
        return all(self._positions.get(tp, end) >= end for tp, end in ends.items())

    def _serve_rebalance(self) -> None:
        what, partitions, _ends = self._rebalances.popleft()
        self._serve(what, partitions)

    def _serve(self, what: str, partitions: list[Partition]) -> None:
        self.journal.add(Event(what, {tp: self._positions.get(tp, -1) for tp in partitions}))
        if what == "assign":
            self._assigned |= set(partitions)
            for tp in partitions:
                self._positions[tp] = self.group_committed.get(tp, 0)
        elif what == "lost":
            # Lost: another member may own them already; this one can no longer commit them.
            self._forget(partitions)
        self._during = what
        try:
            if what == "assign":
                assert self._on_assign is not None
                starts = self._on_assign(partitions)
                for tp, offset in (starts or {}).items():
                    self._positions[tp] = 0 if offset == OFFSET_BEGINNING else offset
                self.journal.add(Event("started", {tp: self._positions[tp] for tp in partitions}))
            else:
                self._callbacks[what](partitions)
        finally:
            self._during = None
        if what == "revoke":
            self._forget(partitions)

    def _forget(self, partitions: list[Partition]) -> None:
        for tp in partitions:
            self._assigned.discard(tp)
            self._positions.pop(tp, None)
            self._read_from.discard(tp)
            self._held.discard(tp)
            self._backoff.pop(tp, None)

    def _read(self, most: int) -> list[Message]:
        out: list[Message] = []
        for tp in sorted(self._assigned - self._held - self._backoff.keys()):
            start = self._positions[tp]
            taken = self._logs[tp][start : start + most - len(out)]
            self._positions[tp] = start + len(taken)
            if taken:
                self._read_from.add(tp)
            out += taken
        return out


class FakeSink:
    """A top layer in memory. The first `busy` calls ask to slow down for `retry_after` s; the
    changes of the keys in `reject` (key -> why) are refused for good, those of the keys in
    `stale` are not written (it holds a higher sequence of them). With `offsets` (per
    group and partition, the next offset: a database's table, shared by sinks), it keeps
    offsets as the SQL sink does: stored with a batch unless a change of it is rejected."""

    def __init__(
        self,
        journal: Journal,
        busy: int = 0,
        retry_after: float = 0.1,
        reject: Mapping[str, str] | None = None,
        offsets: dict[tuple[str, Partition], int] | None = None,
        stale: Collection[str] = (),
    ) -> None:
        self.journal = journal
        self.stale = set(stale)
        self.busy = busy
        self.retry_after = retry_after
        self.reject = dict(reject or {})
        self.offsets = offsets
        self.states: list[SiteAvailability] = []

    def applied(self) -> list[Change]:
        """Every change applied so far (refused ones left out), in order."""
        return [c for e in self.journal.events("apply") for c in e.changes]

    def apply(self, changes: Sequence[Change], progress: Progress | None = None) -> ApplyResult:
        if self.busy:
            self.busy -= 1
            self.journal.add(Event("refused", changes=list(changes)))
            raise SinkBackpressureError("the fake top layer is busy", self.retry_after)
        rejected = [(c, self.reject[c.key]) for c in changes if c.key in self.reject]
        kept = [c for c in changes if c.key not in self.reject]
        stored = progress is not None and self.offsets is not None and not rejected
        if stored:
            assert progress is not None and self.offsets is not None
            for tp, offset in progress.offsets.items():
                self.offsets[(progress.group, tp)] = offset
        offsets = dict(progress.offsets) if stored and progress is not None else {}
        self.journal.add(Event("apply" if changes else "offsets", offsets, changes=kept))
        stale = sum(1 for c in kept if c.key in self.stale)
        return ApplyResult(
            written=len(kept) - stale, rejected=rejected, progress_stored=stored, stale=stale
        )

    def stored_offsets(
        self, group: str, partitions: Collection[Partition]
    ) -> dict[Partition, int] | None:
        if self.offsets is None:
            return None
        return {tp: self.offsets[(group, tp)] for tp in partitions if (group, tp) in self.offsets}

    def set_availability(self, states: Sequence[SiteAvailability]) -> None:
        self.states += states

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeDeadLetters:
    """A dead-letter topic in memory; the first `failures` deliveries fail."""

    def __init__(self, journal: Journal, failures: int = 0) -> None:
        self.journal = journal
        self.failures = failures
        self.closed = False

    def delivered(self) -> list[DeadLetter]:
        return [letter for e in self.journal.events("dead letters") for letter in e.letters]

    def deliver(self, letters: Sequence[DeadLetter]) -> bool:
        if self.failures:
            self.failures -= 1
            self.journal.add(Event("undelivered", letters=list(letters)))
            return False
        self.journal.add(Event("dead letters", letters=list(letters)))
        return True

    def close(self) -> None:
        self.closed = True


def top_consumer(
    group: FakeGroupConsumer,
    sink: FakeSink | None = None,
    dead_letters: FakeDeadLetters | None = None,
    policy: WindowPolicy | None = None,
    limiter: RateLimiter | None = None,
    metrics: ConsumerMetrics | None = None,
    codec: Codec | None = None,
    decode: Callable[[Message, str], Change] | None = None,
    delete_retention: float = 86_400.0,
    stall_after: float = 60.0,
) -> TopConsumer:
    """A top consumer of the site topics `site.*` over `group`, as the service builds one (its
    consumer group is "top")."""
    codec = codec or Codec()
    return TopConsumer(
        consumer=group,
        pattern=r"^site\..+",
        topic_prefix="site",
        decode=decode or (lambda msg, site: change_from_message(msg, codec, site)),
        sink=sink or FakeSink(group.journal),
        dead_letters=dead_letters or FakeDeadLetters(group.journal),
        limiter=limiter or RateLimiter(None, None),
        policy=policy or POLICY,
        metrics=metrics or ConsumerMetrics(CollectorRegistry()),
        availability=Availability(AvailabilityPolicy(), AvailabilityMetrics(CollectorRegistry())),
        resume=ResumePolicy("top", "site", delete_retention),
        stall_after=stall_after,
    )
