"""The top consumer's offsets: where reading resumes, what is committed per partition, the commit.

Where a partition assigned starts is decided here, in one place: a sink that keeps offsets (the
SQL sink, in the transaction of each batch) says, and a partition it knows nothing of starts at
the beginning of its compacted topic, so a database restored from a backup replays exactly what
it lost and an empty one is rebuilt from the log, whatever the group committed in Kafka. A stored
offset older than what the log still proves (tombstones are removed `delete.retention.ms` after
they are written) is reported loudly: deletions may be missing. A sink that keeps none (HTTP)
leaves it to the group's committed offsets, read at assignment (retried with a backoff while the
broker does not answer).

`Offsets` is the checkpoint of the windows the loop applied: a sink that keeps offsets stores a
window's with the call that applies its last changes, in the same transaction, or (when that
call rejected changes, or the window had nothing to write) on their own once its dead letters
are delivered; then every window finished in a turn is committed to Kafka in one commit (for lag
monitoring, and the HTTP sink's resuming), refusing an offset behind where reading started or
what is committed, retrying a failed commit with the next one. It commits the idle positions
past transaction markers, keeps the lag gauge (from the ends `lag.LagEnds` asks for on a thread
of its own), forgets partitions revoked or lost, and tells
`--until-idle` when the group has committed every site partition to its end. The loop decides
what is applied; this object only stores and commits it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from connector.errors import KafkaError
from connector.kafka import OFFSET_BEGINNING
from connector.kafka.client import RepeatedErrors
from connector.kafka.group_consumer import Partition
from connector.sinks.base import Progress, Sink, SinkBackpressureError, SinkError
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.group import GroupConsumer
from connector.top.lag import LagEnds
from connector.top.window import Closed

log = logging.getLogger(__name__)

#: A failing commit fails again at every turn until the coordinator answers: one line, then counts.
_COMMIT_ERRORS = RepeatedErrors(log)

#: Seconds between two checks of the group's progress for `--until-idle`.
IDLE_CHECK_SECONDS = 1.0
#: Seconds the checks of a new assignment against the log (`_check_log_kept`) and of the
#: group's progress (`group_caught_up`) may take in all: each asks the broker once per
#: partition, and the loop, and a stop, wait for them.
CHECK_TIMEOUT = 5.0

#: Seconds one read of a new assignment's committed offsets may wait for the broker (the loop
#: waits with it, and so does a stop), and the backoff between reads that failed: doubling from
#: the first figure up to the second.
ASSIGN_READ_TIMEOUT = 5.0
ASSIGN_RETRY_SECONDS = (1.0, 15.0)
#: Reads of the sink's stored offsets at an assignment before the consumer gives up and stops
#: (resuming from anywhere else could skip what a restored database lost).
SINK_READ_TRIES = 3


@dataclass(frozen=True)
class ResumePolicy:
    """What deciding where reading resumes needs beyond the sink: the consumer group, the site
    topics' prefix (to name a partition's site), and the topics' `delete.retention.ms` in seconds
    (how long the log keeps a tombstone)."""

    group: str
    topic_prefix: str
    delete_retention: float


class Offsets:
    """The committed offsets of the partitions assigned to this member of the group."""

    def __init__(
        self,
        consumer: GroupConsumer,
        pattern: str,
        metrics: ConsumerMetrics,
        sink: Sink,
        resume: ResumePolicy,
        lag_ends: LagEnds,
    ) -> None:
        self._consumer = consumer
        self._pattern = pattern
        self._metrics = metrics
        self._sink = sink
        self._resume = resume
        #: whether the sink keeps offsets; learnt at the first assignment
        self._sink_keeps = False
        self._assigned: set[Partition] = set()
        self._committed: dict[Partition, int] = {}
        #: assigned partitions whose committed offsets are not read yet, when to read them
        #: again, and the backoff after that read if it fails too; see `read_committed`
        self._unread: set[Partition] = set()
        self._unread_retry = 0.0
        self._unread_backoff = ASSIGN_RETRY_SECONDS[0]
        #: offsets applied whose commit failed; retried with the next commit
        self._uncommitted: dict[Partition, int] = {}
        self._next_idle_check = 0.0
        self._lag_ends = lag_ends

    @property
    def assigned(self) -> frozenset[Partition]:
        return frozenset(self._assigned)

    def assign(self, partitions: Collection[Partition]) -> dict[Partition, int] | None:
        """`partitions` were assigned to this member: where each starts (the offset the sink
        holds, or the beginning of the log), or None when the sink keeps no offsets (then the
        group's committed offsets decide, read here for the commit check). Raises SinkError
        when the sink cannot say."""
        log.info("assigned %s", names(partitions))
        self._assigned |= set(partitions)
        self._lag_ends.want(frozenset(self._assigned))
        stored = self._stored_offsets(partitions)
        self._sink_keeps = stored is not None
        if stored is None:
            self._unread |= set(partitions)
            self.read_committed(time.monotonic())
            return None
        for tp in partitions:
            # Commits are checked against where reading starts: after a restore, that is
            # behind what the group committed in Kafka, and rightly so.
            self._committed[tp] = stored.get(tp, -1)
        self._check_log_kept(stored)
        starts = {tp: stored.get(tp, OFFSET_BEGINNING) for tp in partitions}
        log.info(
            "reading resumes where the sink stands: %s",
            ", ".join(
                f"{t}[{p}]@{'beginning' if o == OFFSET_BEGINNING else o}"
                for (t, p), o in sorted(starts.items())
            )
            or "nothing",
        )
        return starts

    def _stored_offsets(self, partitions: Collection[Partition]) -> dict[Partition, int] | None:
        """The sink's stored offsets of `partitions`, tried SINK_READ_TRIES times while the sink
        asks to wait; SinkError when it cannot say."""
        for attempt in range(1, SINK_READ_TRIES + 1):
            try:
                return self._sink.stored_offsets(self._resume.group, partitions)
            except SinkBackpressureError as exc:
                if attempt == SINK_READ_TRIES:
                    raise SinkError(
                        f"cannot learn where reading resumes from the sink ({exc}); stopping "
                        "rather than resuming anywhere else"
                    ) from exc
                log.warning("cannot read the sink's stored offsets (%s); trying again", exc)
                time.sleep(min(exc.retry_after, ASSIGN_RETRY_SECONDS[1]))
        raise AssertionError("unreachable")

    def _check_log_kept(self, stored: Mapping[Partition, int]) -> None:
        """Say loudly when a stored offset is older than what the log still proves: records
        after it removed from the log's start, or written longer than the topic's own
        `delete.retention.ms` ago (the cleaner may have removed their tombstones; a topic
        altered by hand keeps them for less, or more, than the settings say). Reading from
        there cannot see those deletions: the top layer may keep objects that are gone."""
        left = _time_left(CHECK_TIMEOUT)
        retention = self._delete_retention({topic for topic, _p in stored}, left())
        now = time.time()
        unchecked: dict[Partition, str] = {}
        for (topic, partition), offset in sorted(stored.items()):
            kept_for = retention.get(topic, self._resume.delete_retention)
            try:
                low, _high = self._consumer.watermarks(topic, partition, timeout=left())
                kept = self._consumer.first_offset_since(
                    topic, partition, int((now - kept_for) * 1000), timeout=left()
                )
            except KafkaError as exc:
                unchecked[(topic, partition)] = str(exc)
                continue
            proven = max(low, kept)
            if offset >= proven:
                continue
            self._metrics.offsets_behind_log.labels(topic, str(partition)).inc()
            log.error(
                "site %s: the sink stands at offset %d of %s[%d], but the log proves only from "
                "offset %d on (its start is %d; tombstones written more than %.0f s ago may be "
                "gone): the top layer may keep objects deleted since. The database is older "
                "than the topic's delete.retention.ms (a restored backup?): rebuild it from "
                "the log (start the consumer on an empty database: every partition is read "
                "from its beginning), or run `cascade-connector audit --repair`",
                topic.removeprefix(self._resume.topic_prefix + "."),
                offset,
                topic,
                partition,
                proven,
                low,
                kept_for,
            )
        if unchecked:
            log.warning(
                "cannot check that %s still hold every tombstone after the sink's offsets: %s",
                names(unchecked),
                "; ".join(sorted(set(unchecked.values()))),
            )

    def _delete_retention(self, topics: Collection[str], timeout: float) -> dict[str, float]:
        """The topics' own delete.retention.ms in seconds, as the broker tells; the configured
        figure (ResumePolicy) stands in for a topic the broker did not say, with a warning."""
        if not topics:
            return {}
        try:
            found = self._consumer.delete_retention(topics, timeout=timeout)
        except KafkaError as exc:
            found = {}
            log.warning("cannot read the site topics' delete.retention.ms: %s", exc)
        missing = sorted(set(topics) - found.keys())
        if missing:
            log.warning(
                "checking %s against the configured delete.retention.ms (%.0f s): the broker "
                "did not tell their own",
                ", ".join(missing),
                self._resume.delete_retention,
            )
        return found

    def progress(self, windows: Iterable[Closed]) -> Progress | None:
        """The offsets of `windows` for the sink to store with the call that applies their last
        changes; None when it keeps none."""
        return self._progress(
            {tp: offset for closed in windows for tp, offset in closed.window.next_offsets()}
        )

    def _progress(self, offsets: Mapping[Partition, int]) -> Progress | None:
        if not self._sink_keeps or not offsets:
            return None
        return Progress(self._resume.group, dict(offsets))

    def store(self, offsets: Mapping[Partition, int]) -> bool:
        """Store `offsets` in the sink, in a transaction of their own. False when the sink asks
        to wait: try again later."""
        progress = self._progress(offsets)
        if progress is None:
            return True
        try:
            self._sink.apply([], progress)
        except SinkBackpressureError as exc:
            log.warning("cannot store offsets in the sink yet (%s)", exc)
            return False
        return True

    def checkpoint(self, windows: Iterable[Closed]) -> None:
        """`windows` are applied in full and their dead letters delivered: store the offsets of
        each that the sink has not stored with its last call (it had dead letters, or nothing
        to write), then commit those of every window stored, all in one commit (a commit is a
        round trip to the group coordinator: one per window made a turn of a consumer of many
        sites slow; docs/performance.md). A window the sink asks to wait for keeps
        `offsets_stored` False and is left out of the commit: try it again later."""
        offsets: dict[Partition, int] = {}
        stored = False
        for closed in windows:
            next_offsets = dict(closed.window.next_offsets())
            if not closed.offsets_stored:
                closed.offsets_stored = self.store(next_offsets)
            if closed.offsets_stored:
                offsets.update(next_offsets)
                stored = True
        if stored:
            self.commit(offsets)

    def read_committed(self, now: float) -> None:
        """Learn the group's committed offsets of the partitions assigned since the last read
        (the check that no commit goes backwards needs them). The broker may not answer in
        time, during a rebalance on a loaded machine above all: that must not end the loop,
        so the read is tried again from the loop, with a doubling backoff, while the other
        partitions are read on (librdkafka fetches from the committed offsets on its own;
        only the check waits). A stop is never held longer than one read's timeout."""
        if not self._unread or now < self._unread_retry:
            return
        try:
            found = self._consumer.committed(self._unread, timeout=ASSIGN_READ_TIMEOUT)
        except KafkaError as exc:
            log.warning(
                "cannot read the committed offsets of %s (%s); trying again in %.1fs",
                names(sorted(self._unread)),
                exc,
                self._unread_backoff,
            )
            self._unread_retry = now + self._unread_backoff
            self._unread_backoff = min(2 * self._unread_backoff, ASSIGN_RETRY_SECONDS[1])
            return
        for tp, offset in found.items():
            # A window committed meanwhile is newer than what the group had.
            self._committed[tp] = max(offset, self._committed.get(tp, -1))
        self._unread.clear()
        self._unread_retry = 0.0
        self._unread_backoff = ASSIGN_RETRY_SECONDS[0]

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit `offsets` (next offsets to read) and any earlier ones whose commit failed.
        Raises KafkaError, committing nothing, if one is behind what is committed."""
        for tp, offset in offsets.items():
            previous = self._committed.get(tp, -1)
            if offset < previous:
                raise KafkaError(
                    f"refusing to commit {tp[0]}[{tp[1]}]@{offset}: behind the committed {previous}"
                )
        pending = {**self._uncommitted}
        for tp, offset in offsets.items():
            pending[tp] = max(offset, pending.get(tp, -1))
        if not pending:
            return
        try:
            self._consumer.commit(pending)
        except KafkaError as exc:
            # The window is applied; the commit is retried with the next one (or when idle),
            # and whoever reads these partitions meanwhile re-applies it, which the sink's
            # sequence check makes harmless.
            self._metrics.commit_errors.inc()
            self._uncommitted = pending
            _COMMIT_ERRORS.report(logging.ERROR, f"{exc} (will retry)")
            return
        self._uncommitted = {}
        self._committed.update(pending)

    def publish_lag(self) -> None:
        """Set the lag gauge of every assigned partition the latest answer of `lag.LagEnds`
        (asked every LAG_SECONDS, on a thread of its own) tells: its end (the last stable
        offset) minus what the group committed, or minus nothing when nothing is committed.
        Set at commits only, it froze when commits stopped (a stuck member's lag never grew)
        and a partition just assigned had none until its first commit, which made a member
        that had just joined look caught up. Not librdkafka's cached watermarks: that read
        holds the GIL while it takes librdkafka's locks, and a consumer with the broker frozen
        was seen stuck in it, deaf to SIGTERM; while the broker does not answer, the gauge
        waits. A partition revoked since it was asked for gets no gauge again."""
        ends = self._lag_ends.take()
        if ends is None:
            return
        for (topic, partition), end in ends.items():
            if (topic, partition) not in self._assigned:
                continue
            start = max(0, self._committed.get((topic, partition), 0))
            self._metrics.lag.labels(topic, str(partition)).set(max(0, end - start))

    def commit_past_markers(self) -> None:
        """When idle, commit the positions ahead of what is committed: everything before them
        was read and applied, or is what read-committed reading skips (a transaction's commit
        marker takes the offset after its last record; an aborted transaction's records).
        Committed (and stored in a sink that keeps offsets), they let the group's offsets reach
        the ends of partitions written in transactions, which `--until-idle` and the lag metric
        compare them with."""
        positions = self._consumer.positions(self._assigned)
        ahead = {tp: o for tp, o in positions.items() if o > self._committed.get(tp, -1)}
        if ahead and self.store(ahead):
            self.commit(ahead)

    def revoke(self, partitions: Collection[Partition]) -> None:
        """`partitions` go to another member: retry their failed commit once more, then forget
        them. Every applied window was committed right after it; what is still pending for
        them was not, and the next owner reads it again."""
        if set(partitions) & self._uncommitted.keys():
            self.commit({})
        self._forget(partitions)
        log.info("revoked %s", names(partitions))

    def lose(self, partitions: Collection[Partition]) -> None:
        """`partitions` were lost (the session lapsed): forget them, committing nothing."""
        self._forget(partitions)
        log.warning("lost %s (dropped their pending changes)", names(partitions))

    def _forget(self, partitions: Collection[Partition]) -> None:
        gone = set(partitions)
        self._assigned -= gone
        self._lag_ends.want(frozenset(self._assigned))
        self._unread -= gone
        for tp in gone:
            self._committed.pop(tp, None)
            self._uncommitted.pop(tp, None)
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(tp[0], str(tp[1]))

    def group_caught_up(self) -> bool:
        """True when the group has committed every site partition to its end: stored in the
        sink, for a sink that keeps offsets (after a restore, Kafka's committed offsets say so
        long before the sink is caught up). Checked at most once a second: it asks the broker
        and the sink. The loop asks only while it holds nothing read."""
        now = time.monotonic()
        if now < self._next_idle_check or self._uncommitted:
            return False
        self._next_idle_check = now + IDLE_CHECK_SECONDS
        left = _time_left(CHECK_TIMEOUT)
        try:
            partitions = self._consumer.partitions_matching(self._pattern, timeout=left())
            stored = self._sink.stored_offsets(self._resume.group, partitions)
            committed = (
                stored
                if stored is not None
                else self._consumer.committed(partitions, timeout=left())
            )
            for topic, partition in partitions:
                low, high = self._consumer.watermarks(topic, partition, timeout=left())
                if high > low and committed.get((topic, partition), -1) < high:
                    return False
        except (KafkaError, SinkError, SinkBackpressureError) as exc:
            log.warning("cannot tell whether the group is idle yet: %s", exc)
            return False
        return True


def _time_left(seconds: float) -> Callable[[], float]:
    """What is left of `seconds` from now, each time it is asked; KafkaError once none is."""
    deadline = time.monotonic() + seconds

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaError(f"no answer from Kafka within {seconds:g} s in all")
        return remaining

    return left


def names(partitions: Collection[Partition]) -> str:
    """`partitions` for a log line: topic[partition], ..."""
    return ", ".join(f"{t}[{p}]" for t, p in partitions) or "nothing"
