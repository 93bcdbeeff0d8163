"""The top consumer loop: read every site topic, coalesce per site, apply fairly, then commit.

One thread drives everything, and it never stops polling. What it reads goes into its site's
filling window (the last change per key). A window closes once the window before it is applied,
it is `--batch-wait` old, its partitions are read to their ends, and the changes it absorbed
could have been applied by now at the rate limit (or it is `--max-window-wait` old): while a
site storms faster than the top layer takes changes, its window keeps absorbing, so the slower
the top layer the stronger the collapse. A closed window drops what the top layer already holds
(see `window.Applied`), then goes out in sink calls the rate limit allows, each call's room
shared between sites by `FairShare`. Once all of a window is applied and its dead letters
delivered, exactly its offsets are committed.

Memory follows keys: past `--max-pending-keys` the partitions of the sites holding the most are
paused (polling goes on, so the group keeps this member) until they drain. A sink asking to slow
down holds the calls, never the reading; a schema registry that does not answer rewinds and
pauses the partition it was needed for.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from connector.errors import KafkaError
from connector.kafka import Message
from connector.kafka.group_consumer import Consumer
from connector.ops.cleanup import cleanup_after
from connector.records.errors import DecodeError, RegistryError
from connector.records.model import Change, StatusRecord
from connector.sinks.base import Sink, SinkBackpressureError
from connector.top.availability import Availability
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.dead_letters import DeadLetter, DeadLetterQueue
from connector.top.fair import FairShare
from connector.top.rate import RateLimiter
from connector.top.window import Applied, Partition, Pending, SiteQueue, Taken, fingerprint

log = logging.getLogger(__name__)

#: Turns one consumed Kafka message of the topic of a site (the second argument) into a Change;
#: raises DecodeError for whatever cannot be one, WrongSiteError for another site's message.
Decoder = Callable[[Message, str], Change]

#: How long to wait before reading again what needed an unanswering schema registry, and before
#: retrying dead letters that could not be delivered.
RETRY_SECONDS = 5.0

#: Seconds between two checks of the group's progress for `--until-idle`.
IDLE_CHECK_SECONDS = 1.0

#: The longest one poll waits, so stops, window closes and metrics are never late by more.
MAX_POLL_SECONDS = 0.5

#: The least share of the thread reading gets while sink calls are also due.
READ_SHARE = 0.25

#: Records decoded between two looks at whether a sink call is due.
CALL_CHECK_EVERY = 64

#: How long the broker's answer to "what is this partition's last stable offset?" is trusted,
#: and how long asking waits. A poller publishing steadily always has a transaction open, so a
#: busy site's partitions look behind at every window's close; asking only after they had
#: looked so for a second held each of its windows that second longer.
STABLE_END_SECONDS = 0.25
STABLE_END_TIMEOUT = 1.0

#: A storming site's window closes once no object changed for this many of its poll intervals:
#: the storm is over as far as its polls can tell (one interval could fall between two polls).
QUIET_POLLS = 2

#: Seconds one read of a new assignment's committed offsets may wait for the broker (the loop
#: waits with it, and so does a stop), and the backoff between reads that failed: doubling from
#: the first figure up to the second.
ASSIGN_READ_TIMEOUT = 5.0
ASSIGN_RETRY_SECONDS = (1.0, 15.0)

#: Once over the pending-keys cap, partitions stay paused until pending keys fall this far
#: below it, so they are not paused and resumed on every poll.
RESUME_FRACTION = 0.9


@dataclass(frozen=True)
class WindowPolicy:
    """When a window closes, how it goes out, and how much may wait in memory."""

    call_size: int  #: changes per sink call at most (the rate limit may allow fewer)
    wait: float  #: seconds a window stays open at least, once it has a record
    max_wait: float  #: seconds a window stays open at most while its site storms
    max_pending_keys: int  #: keys waiting over all sites before reading is paused
    #: kinds applied first within a site's share, in this order (heartbeats always go first)
    kind_priority: tuple[str, ...] = ()
    #: a site's share of each call relative to the others (default 1)
    site_weights: Mapping[str, float] = field(default_factory=dict)


class TopConsumer:
    """Applies every site topic matching `pattern` to `sink`, at the rate `limiter` allows."""

    def __init__(
        self,
        consumer: Consumer,
        pattern: str,
        topic_prefix: str,
        decode: Decoder,
        sink: Sink,
        dead_letters: DeadLetterQueue,
        limiter: RateLimiter,
        policy: WindowPolicy,
        metrics: ConsumerMetrics,
        availability: Availability,
    ) -> None:
        self._consumer = consumer
        self._pattern = pattern
        self._prefix = topic_prefix + "."
        self._decode = decode
        self._sink = sink
        self._dlq = dead_letters
        self._limiter = limiter
        self._policy = policy
        self._metrics = metrics
        self._availability = availability
        self._availability_retry = 0.0
        # Exported so a dashboard can draw rows/s against the limit.
        metrics.max_rate.set(limiter.max_rate or 0)
        self._priority = {kind: i for i, kind in enumerate(policy.kind_priority)}
        self._fair = FairShare(policy.site_weights)
        self._sites: dict[str, SiteQueue] = {}  #: by topic
        self._applied = Applied()
        self._assigned: set[Partition] = set()
        self._committed: dict[Partition, int] = {}
        #: assigned partitions whose committed offsets are not read yet, when to read them
        #: again, and the backoff after that read if it fails too; see `_read_committed`
        self._unread: set[Partition] = set()
        self._unread_retry = 0.0
        self._unread_backoff = ASSIGN_RETRY_SECONDS[0]
        #: partition -> (monotonic time asked, last stable offset), see `_stable_end`
        self._stable_ends: dict[Partition, tuple[float, int]] = {}
        #: offsets applied whose commit failed; retried with the next commit
        self._uncommitted: dict[Partition, int] = {}
        #: topic -> when to retry delivering the dead letters of its applied window
        self._letters_retry: dict[str, float] = {}
        self._released: deque[tuple[float, int]] = deque()
        self.max_per_second = 0  #: the most changes released within any one second
        self.max_pending = 0  #: the most keys pending at once (over all sites)
        self.assign_events = 0  #: rebalances that gave this member partitions
        self._sink_backoff_until = 0.0
        self._last_call_end = 0.0
        self._last_call_took = 0.0
        self._over_cap = False
        self._next_idle_check = 0.0
        self._next_snapshot = 0.0
        self._stop = threading.Event()
        self.last_poll = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to finish; safe from a signal handler or another thread."""
        self._stop.set()

    def run(self, until_idle: bool = False) -> None:
        """Consume until `stop()`, or (with `until_idle`) until every partition of every site
        topic is applied and committed to its end by the group."""
        # A failing close or flush must not hide why the loop ended.
        with cleanup_after(self._consumer.close, self._dlq.close):
            self._consumer.subscribe(self._pattern, self._on_assign, self._on_revoke, self._on_lost)
            while not self._stop.is_set():
                if self._step() and until_idle and self._group_caught_up():
                    log.info("every site partition is applied and committed to its end")
                    return

    def _step(self) -> bool:
        """One turn of the loop; True when it found nothing to do."""
        now = time.monotonic()
        self._read_committed(now)
        self._close_windows(now)
        ready = self._ready()
        hold = max(self._limiter.delay(), self._sink_backoff_until - now) if ready else 0.0
        timeout = hold if ready else self._until_a_window_closes(now)
        started = time.monotonic()
        messages = self._consumer.consume(self._policy.call_size, max(0.0, timeout))
        self.last_poll = time.monotonic()
        if ready and hold > 0:
            waited = self.last_poll - started
            if now < self._sink_backoff_until:
                self._metrics.backpressure_seconds.inc(waited)
            else:
                self._metrics.rate_limited_seconds.inc(waited)
        self._take(messages)
        self._judge_sites(waited=self.last_poll - started)
        if self._ready() and self._may_call(reading=bool(messages)):
            self._call()
        self._finish_windows()
        self._enforce_cap()
        self._snapshot()
        idle = not messages and not any(q.busy for q in self._sites.values())
        if idle:
            self._commit(self._past_markers())
        return idle

    def _past_markers(self) -> dict[Partition, int]:
        """When idle, the positions ahead of what is committed: everything before them was
        read and applied, or is what read-committed reading skips (a transaction's commit
        marker takes the offset after its last record; an aborted transaction's records).
        Committed, they let the group's offsets reach the ends of partitions written in
        transactions, which `--until-idle` and the lag metric compare them with."""
        positions = self._consumer.positions(self._assigned)
        return {
            tp: offset for tp, offset in positions.items() if offset > self._committed.get(tp, -1)
        }

    def _until_a_window_closes(self, now: float) -> float:
        times = [MAX_POLL_SECONDS]
        for q in self._sites.values():
            at = self._closes_at(q)
            if q.closed is None and at is not None:
                times.append(at - now)
        return min(times)

    def _closes_at(self, q: SiteQueue) -> float | None:
        """When `q`'s filling window may close: `wait` after its first record; but while its
        site changes faster than the rate limit (churn over the time the site took for it),
        not before the top layer could have taken that churn, up to `max_wait`. Waiting that
        long at most doubles the delay pushing every change would have caused, and a burst
        shorter than that costs one write per key that really changed. Once the site's polls
        saw no change for QUIET_POLLS intervals (known from its heartbeats), the storm is over
        and holding on would only delay its last states."""
        window = q.filling
        if window.opened is None:
            return None
        hold = self._policy.wait
        rate = self._limiter.max_rate
        if rate is not None and not q.held:
            needed = window.churn / rate
            if needed > window.span:
                hold = max(hold, min(self._policy.max_wait, needed))
                if q.poll_interval is not None and window.last_churn is not None:
                    quiet = window.last_churn + QUIET_POLLS * q.poll_interval - window.opened
                    hold = max(self._policy.wait, min(hold, quiet))
        return window.opened + hold

    def _close_windows(self, now: float) -> None:
        for q in self._sites.values():
            at = self._closes_at(q)
            if q.closed is not None or at is None or at > now:
                continue
            opened = q.filling.opened
            young = opened is not None and now - opened < self._policy.max_wait
            if young and not q.held and self._behind(q):
                # A backlog is read to its end before its window closes, so it collapses
                # whole (memory stays within --max-pending-keys).
                continue
            merged = q.filling.merged
            closed = q.close(self._applied, self._priority)
            self._metrics.windows.inc()
            self._metrics.skipped.inc(closed.skipped)
            self._metrics.coalesced.inc(merged)

    def _behind(self, q: SiteQueue) -> bool:
        """True while records that were in Kafka when `q`'s window became due to close are not
        read yet, for a partition of the window. From where it will read next, not the last
        record + 1 (a transaction's commit marker takes an offset too); and up to the last
        stable offset, not the high watermark of the last fetch, which counts the records of a
        transaction still open (a paused poller's, say): waiting for those held a window for up
        to `max_wait`. The end is fixed when the window is first due: a site that publishes all
        the time (transactions committed five times a second) always has a record more, and
        chasing it held windows for seconds. The broker is asked at most every
        STABLE_END_SECONDS per partition (asking on every look costs a round trip per
        partition, which slowed a consumer of 20 sites several times over), and only when a
        window is due to close."""
        now = time.monotonic()
        window = q.filling
        positions = self._consumer.positions(window.last.keys())
        reached = {tp: max(last + 1, positions.get(tp, -1)) for tp, last in window.last.items()}
        if window.read_to is None:
            window.read_to = {}
            for tp, read in reached.items():
                _low, high = self._consumer.watermarks(*tp, cached=True)
                window.read_to[tp] = self._stable_end(tp, now) if high > read else read
        return any(window.read_to.get(tp, -1) > read for tp, read in reached.items())

    def _stable_end(self, tp: Partition, now: float) -> int:
        """The partition's last stable offset, asked of the broker at most every
        STABLE_END_SECONDS; -1 (nothing to wait for) when the broker does not answer soon."""
        known = self._stable_ends.get(tp)
        if known is not None and now - known[0] < STABLE_END_SECONDS:
            return known[1]
        try:
            _low, end = self._consumer.watermarks(*tp, timeout=STABLE_END_TIMEOUT)
        except KafkaError:
            end = -1
        self._stable_ends[tp] = (now, end)
        return end

    def _ready(self) -> bool:
        return any(q.closed is not None and q.closed.remaining for q in self._sites.values())

    def _may_call(self, reading: bool) -> bool:
        """Whether the next sink call may go now. While there is also reading to do, reading
        gets at least READ_SHARE of the thread, so windows keep filling while a slow sink
        applies (and the top layer, the scarce one, gets the rest)."""
        now = time.monotonic()
        reading_due = self._last_call_took * READ_SHARE / (1 - READ_SHARE)
        if reading and now - self._last_call_end < reading_due:
            return False
        return now >= self._sink_backoff_until and self._limiter.delay() <= 0

    def _take(self, messages: list[Message]) -> None:
        now = time.monotonic()
        rewound: set[Partition] = set()
        for i, msg in enumerate(messages):
            if i % CALL_CHECK_EVERY == 0 and i and self._ready() and self._may_call(reading=True):
                # Decoding a large poll takes a while: the calls due meanwhile go on time.
                self._call()
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            tp = (topic, partition)
            if tp in rewound:
                continue
            q = self._queue(topic)
            window = q.filling
            try:
                change = self._decode(msg, q.site)
            except DecodeError as exc:
                window.read(tp, offset, now)
                letter = DeadLetter(
                    topic, partition, offset, msg.key(), msg.value(), exc.category, str(exc)
                )
                window.dead(letter)
                continue
            except RegistryError as exc:
                # The bytes may be fine; the registry is not. Read this partition again from
                # this record once it answers; the other partitions go on.
                log.warning(
                    "schema registry unavailable (%s); reading %s[%d] again in %.0fs",
                    exc,
                    topic,
                    partition,
                    RETRY_SECONDS,
                )
                self._consumer.trigger_backpressure({tp: offset}, RETRY_SECONDS)
                rewound.add(tp)
                continue
            window.read(tp, offset, now)
            if isinstance(change, StatusRecord) and change.is_heartbeat:
                interval = change.details.get("poll.interval")
                if isinstance(interval, int | float) and interval > 0:
                    q.poll_interval = float(interval)
                if change.site == q.site:
                    beat = change.details.get("heartbeat.interval")
                    every = float(beat) if isinstance(beat, int | float) else None
                    self._availability.heartbeat(q.site, tp, change.status, every, now)
            entry = Pending(change, tp, offset, msg.value(), fingerprint(change), now)
            window.put(entry, self._applied.get(tp, change.key))

    def _judge_sites(self, waited: float) -> None:
        """Update the sites' availability (`waited`: seconds the last poll waited for records),
        and hand its changes to the sink in calls of their own (a busy sink: tried again after
        RETRY_SECONDS)."""
        now = time.monotonic()
        held = [q.site for q in self._sites.values() if q.held]
        self._availability.tick(now, waited, paused=held)
        states = self._availability.unwritten()
        if not states or now < self._availability_retry:
            return
        try:
            self._sink.set_availability(states)
        except SinkBackpressureError as exc:
            log.warning("sink refused site availability for now (%s)", exc)
            self._availability_retry = now + RETRY_SECONDS
            return
        self._availability.written(states)

    def _queue(self, topic: str) -> SiteQueue:
        q = self._sites.get(topic)
        if q is None:
            q = self._sites[topic] = SiteQueue(topic.removeprefix(self._prefix))
        return q

    def _call(self) -> None:
        """One sink call: each site with changes ready gets its fair share of the room."""
        ready = {
            topic: q.closed.remaining
            for topic, q in self._sites.items()
            if q.closed is not None and q.closed.remaining
        }
        room = self._limiter.max_release(self._policy.call_size)
        shares = self._fair.split(ready, room)
        taken: list[tuple[SiteQueue, Taken]] = []
        for topic, n in shares.items():
            q = self._sites[topic]
            taken.append((q, q.take(n, self._applied)))
        # Distinct keys, as the sink requires: a window holds one entry per key, and the decoder
        # lets into a site's window only keys of that site, so no two sites share one.
        entries = [e for _q, part in taken for e in part.entries]
        if not entries:
            # All of it was already held by the top layer: nothing to write, nothing to pace.
            self._settle(taken)
            return
        started = time.monotonic()
        try:
            result = self._sink.apply([e.change for e in entries])
        except SinkBackpressureError as exc:
            log.warning("sink asked to slow down (%s); retrying in %.1fs", exc, exc.retry_after)
            self._metrics.batches.labels("backpressure").inc()
            self._sink_backoff_until = time.monotonic() + exc.retry_after
            return
        self._last_call_end = time.monotonic()
        self._last_call_took = self._last_call_end - started
        self._metrics.apply_seconds.observe(self._last_call_took)
        self._metrics.batches.labels("applied").inc()
        self._metrics.rows_applied.inc(result.written)
        self._limiter.release(len(entries))
        self._count_release(len(entries))
        refused = {change.key: reason for change, reason in result.rejected}
        self._settle(taken)
        for q, part in taken:
            assert q.closed is not None
            for e in part.entries:
                reason = refused.get(e.change.key)
                if reason is not None:
                    q.closed.window.dead(_rejected(e, reason))
        self._applied.remember(e for e in entries if e.change.key not in refused)
        for e in entries:
            change = e.change
            if isinstance(change, StatusRecord) and change.is_heartbeat:
                self._metrics.heartbeats.heard(change.site, change.observed_at.timestamp())
                self._metrics.heartbeats_applied.inc()

    def _settle(self, taken: list[tuple[SiteQueue, Taken]]) -> None:
        """Move each closed window's cursor past what a call took (applied, or left out)."""
        for q, part in taken:
            q.settle(part)
            self._metrics.coalesced.inc(len(part.replaced))
            self._metrics.skipped.inc(part.skipped)

    def _finish_windows(self) -> None:
        """Commit every closed window applied in full, once its dead letters are delivered."""
        now = time.monotonic()
        for topic, q in self._sites.items():
            closed = q.closed
            if closed is None or closed.remaining:
                continue
            window = closed.window
            if window.dead_letters:
                if now < self._letters_retry.get(topic, 0.0):
                    continue
                if not self._dlq.deliver(window.dead_letters):
                    self._letters_retry[topic] = now + RETRY_SECONDS
                    continue
                self._letters_retry.pop(topic, None)
            self._commit({tp: last + 1 for tp, last in window.last.items()})
            records = window.record_count
            if records:
                self._metrics.records.labels(q.site).inc(records)
            q.closed = None

    def _commit(self, offsets: dict[Partition, int]) -> None:
        """Commit `offsets` and any earlier ones whose commit failed."""
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
            log.error("%s (will retry)", exc)
            return
        self._uncommitted = {}
        for (topic, partition), offset in pending.items():
            self._committed[(topic, partition)] = offset
            _low, high = self._consumer.watermarks(topic, partition, cached=True)
            if high >= 0:
                self._metrics.lag.labels(topic, str(partition)).set(max(0, high - offset))

    def _enforce_cap(self) -> None:
        """Past `max_pending_keys`, pause the sites holding at least an even share of what is
        pending (a quiet site is read on); resume once pending keys fell below the cap again."""
        cap = self._policy.max_pending_keys
        pending = {topic: q.pending for topic, q in self._sites.items()}
        total = sum(pending.values())
        self.max_pending = max(self.max_pending, total)
        if total >= cap:
            busy = [n for n in pending.values() if n]
            share = total / len(busy)
            for topic, n in pending.items():
                self._sites[topic].held |= n >= share
        elif total <= cap * RESUME_FRACTION:
            for q in self._sites.values():
                q.held = False
        held = {topic for topic, q in self._sites.items() if q.held}
        if held or self._over_cap:
            self._consumer.hold({tp for tp in self._assigned if tp[0] in held})
        self._over_cap = bool(held)

    def _snapshot(self) -> None:
        """Publish the windows' state to the metrics, about once a second."""
        now = time.monotonic()
        if now < self._next_snapshot:
            return
        self._next_snapshot = now + 1.0
        wall = time.time()
        sites: dict[str, tuple[int, float | None]] = {}
        opened: list[float] = []
        for q in self._sites.values():
            oldest = q.oldest()
            sites[q.site] = (q.pending, None if oldest is None else wall - (now - oldest))
            if q.filling.opened is not None:
                opened.append(q.filling.opened)
        self._metrics.pending.sites = sites
        self._metrics.window_keys.set(sum(len(q.filling.entries) for q in self._sites.values()))
        self._metrics.window_age.set(now - min(opened) if opened else 0.0)

    def _count_release(self, records: int) -> None:
        now = time.monotonic()
        self._released.append((now, records))
        while now - self._released[0][0] > 1.0:
            self._released.popleft()
        in_window = sum(n for _t, n in self._released)
        if in_window > self.max_per_second:
            self.max_per_second = in_window
            self._metrics.max_per_second.set(in_window)

    def _on_assign(self, partitions: list[Partition]) -> None:
        self.assign_events += 1
        self._assigned |= set(partitions)
        self._unread |= set(partitions)
        log.info("assigned %s", _names(partitions))
        self._read_committed(time.monotonic())

    def _read_committed(self, now: float) -> None:
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
                _names(sorted(self._unread)),
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

    def _on_revoke(self, partitions: list[Partition]) -> None:
        # Every applied window is committed right after it (a failed commit is retried here,
        # once more); what is still pending for these partitions was not committed, and the
        # next owner reads it again.
        if set(partitions) & self._uncommitted.keys():
            self._commit({})
        self._forget(partitions)
        log.info("revoked %s", _names(partitions))

    def _on_lost(self, partitions: list[Partition]) -> None:
        self._forget(partitions)
        log.warning("lost %s (dropped their pending changes)", _names(partitions))

    def _forget(self, partitions: list[Partition]) -> None:
        gone = set(partitions)
        for q in self._sites.values():
            q.drop(gone)
        self._applied.forget(gone)
        self._availability.forget(gone)
        self._assigned -= gone
        held = {topic for topic, _p in self._assigned}
        for topic in {topic for topic, _p in gone} - held:
            # Its next owner reports the site's heartbeats; an age kept here would only grow.
            self._metrics.heartbeats.forget(topic.removeprefix(self._prefix))
        self._unread -= gone
        for tp in gone:
            self._committed.pop(tp, None)
            self._uncommitted.pop(tp, None)
            self._stable_ends.pop(tp, None)
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(tp[0], str(tp[1]))

    def _group_caught_up(self) -> bool:
        """True when the group has committed every site partition to its end (checked at most
        once a second: it asks the broker)."""
        now = time.monotonic()
        if now < self._next_idle_check or self._uncommitted:
            return False
        if any(q.busy for q in self._sites.values()):
            return False
        self._next_idle_check = now + IDLE_CHECK_SECONDS
        try:
            partitions = self._consumer.partitions_matching(self._pattern)
            committed = self._consumer.committed(partitions)
            for topic, partition in partitions:
                low, high = self._consumer.watermarks(topic, partition)
                if high > low and committed.get((topic, partition), -1) < high:
                    return False
        except KafkaError as exc:
            log.warning("cannot tell whether the group is idle yet: %s", exc)
            return False
        return True

    def __repr__(self) -> str:
        pending = {q.site: q.pending for q in self._sites.values() if q.pending}
        return (
            f"TopConsumer(pattern={self._pattern!r}, pending={pending}, "
            f"paused={len(self._consumer.paused)}, limiter={self._limiter!r})"
        )


def _rejected(entry: Pending, reason: str) -> DeadLetter:
    """The dead letter for a change the sink refused: its original record, and why."""
    topic, partition = entry.partition
    return DeadLetter(
        topic,
        partition,
        entry.offset,
        entry.change.key.encode(),
        entry.value,
        "rejected",
        reason,
    )


def _names(partitions: list[Partition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in partitions) or "nothing"
