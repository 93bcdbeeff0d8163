"""The top consumer loop: read every site topic, coalesce per site, apply fairly, then commit.

One thread drives everything, and it never stops polling. What it reads goes into its site's
filling window (the last change per key) in `sites.Sites`, which also judges each site's
availability from its heartbeats; `closing.WindowCloser` says when a window closes. A closed
window drops what the top layer already holds (`window.Applied`), then goes out in sink calls
the rate limit allows (`pacing.CallPacer`), each call's room shared between sites by
`FairShare`. Once all of a window is applied and its dead letters delivered, `offsets.Offsets`
checkpoints it (stores and commits exactly its offsets), and decides where reading starts. The
lag gauge's question to the broker is asked on a thread of its own (`lag.LagEnds`), never
waited for: the loop only reads its latest answer.

Memory follows keys: past `--max-pending-keys` the partitions of the sites holding the most are
paused (polling goes on, so the group keeps this member) until they drain. A sink asking to slow
down holds the calls, never the reading; a schema registry that does not answer rewinds and
pauses the partition it was needed for. A member that holds no partition while others go unread
rejoins the group with a new client (`watchdog.AssignmentWatchdog`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from connector.kafka import Message
from connector.kafka.group_consumer import Partition
from connector.ops.cleanup import cleanup_after
from connector.records.errors import DecodeError, RegistryError
from connector.records.model import Change
from connector.sinks.base import Sink, SinkBackpressureError
from connector.top.availability import Availability
from connector.top.closing import WindowCloser, WindowPolicy
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.dead_letters import DeadLetter, DeadLetterDelivery
from connector.top.fair import FairShare
from connector.top.group import GroupConsumer
from connector.top.lag import LagEnds
from connector.top.offsets import Offsets, ResumePolicy
from connector.top.pacing import CallPacer
from connector.top.rate import RateLimiter
from connector.top.sites import Sites
from connector.top.watchdog import AssignmentWatchdog
from connector.top.window import Applied, Pending, fingerprint, finishing

log = logging.getLogger(__name__)

#: Turns one consumed Kafka message of the topic of a site (the second argument) into a Change;
#: raises DecodeError for whatever cannot be one, WrongSiteError for another site's message.
Decoder = Callable[[Message, str], Change]

#: The longest one poll waits, so stops, window closes and metrics are never late by more.
MAX_POLL_SECONDS = 0.5
#: Records decoded between two looks at whether a sink call is due.
CALL_CHECK_EVERY = 64
#: Seconds without a partition, while others go unread, before this member rejoins the group
#: (`consumer.stall_after_seconds`).
STALL_AFTER = 60.0


class TopConsumer:
    """Applies every site topic matching `pattern` to `sink`, at the rate `limiter` allows."""

    def __init__(
        self,
        consumer: GroupConsumer,
        pattern: str,
        topic_prefix: str,
        decode: Decoder,
        sink: Sink,
        dead_letters: DeadLetterDelivery,
        limiter: RateLimiter,
        policy: WindowPolicy,
        metrics: ConsumerMetrics,
        availability: Availability,
        resume: ResumePolicy,
        stall_after: float = STALL_AFTER,
    ) -> None:
        self._consumer = consumer
        self._pattern = pattern
        self._decode = decode
        self._sink = sink
        self._dlq = dead_letters
        self._limiter = limiter
        self._policy = policy
        self._metrics = metrics
        self._fair = FairShare(policy.site_weights)
        self._closer = WindowCloser(consumer, policy, limiter.max_rate, metrics)
        self._lag_ends = LagEnds(consumer)
        self._offsets = Offsets(consumer, pattern, metrics, sink, resume, self._lag_ends)
        self._pacer = CallPacer(limiter, metrics)
        self._sites = Sites(topic_prefix, availability, metrics)
        self._applied = Applied()
        self._watchdog = AssignmentWatchdog(stall_after, lambda: consumer.unserved(pattern))
        self.max_pending = 0  #: the most keys pending at once (over all sites)
        self.assign_events = 0  #: rebalances that gave this member partitions
        self._stop = threading.Event()
        self.last_poll = time.monotonic()

    @property
    def max_per_second(self) -> int:
        """The most changes applied within any one second."""
        return self._pacer.max_per_second

    @property
    def stalled(self) -> str | None:
        """Why this member rejoined the group, from then until it holds a partition (/readyz)."""
        return self._watchdog.stalled

    def stop(self) -> None:
        """Ask the loop to finish; safe from a signal handler or another thread. A commit
        waiting for the group coordinator gives up (it is retried by whoever reads next)."""
        self._stop.set()
        self._consumer.interrupt()

    def run(self, until_idle: bool = False) -> None:
        """Consume until `stop()`, or (with `until_idle`) until every partition of every site
        topic is applied and committed to its end by the group."""
        # A failing close or flush must not hide why the loop ended.
        with cleanup_after(self._close_consumer, self._dlq.close):
            self._consumer.subscribe(self._pattern, self._on_assign, self._on_revoke, self._on_lost)
            while not self._stop.is_set():
                if self._step() and until_idle and self._offsets.group_caught_up():
                    log.info("every site partition is applied and committed to its end")
                    return

    def _close_consumer(self) -> None:
        """Stop the lag gauge's questions (waiting for one under way: the client must outlive
        it, `lag.LagEnds`), then leave the group and close."""
        self._lag_ends.stop()
        self._consumer.close()

    def _step(self) -> bool:
        """One turn of the loop; True when it found nothing to do."""
        now = time.monotonic()
        self._offsets.read_committed(now)
        self._closer.close_windows(self._sites, self._applied, now)
        ready = self._sites.ready
        hold = self._pacer.hold(now) if ready else 0.0
        timeout = hold if ready else self._closer.next_close(self._sites, now, MAX_POLL_SECONDS)
        started = time.monotonic()
        messages = self._consumer.consume(self._policy.call_size, max(0.0, timeout))
        self.last_poll = time.monotonic()
        if ready and hold > 0:
            self._pacer.waited(self.last_poll - started, since=now)
        if self._watchdog.check(holding=bool(self._offsets.assigned)):
            self._metrics.rejoins.inc()
            with self._lag_ends.quiet():  # the client it asks through is replaced
                self._consumer.rejoin()
        self._take(messages)
        self._sites.judge(self._sink, waited=self.last_poll - started)
        if self._sites.ready and self._pacer.may_call(reading=bool(messages)):
            self._call()
        self._finish_windows()
        self._enforce_cap()
        self._sites.publish()
        self._offsets.publish_lag()
        idle = not messages and not self._sites.busy
        if idle:
            self._offsets.commit_past_markers()
        return idle

    def _take(self, messages: list[Message]) -> None:
        now = time.monotonic()
        rewound: set[Partition] = set()
        for i, msg in enumerate(messages):
            if i % CALL_CHECK_EVERY == 0 and i and self._sites.ready and self._pacer.may_call(True):
                # Decoding a large poll takes a while: the calls due meanwhile go on time.
                self._call()
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            tp = (topic, partition)
            if tp in rewound:
                continue
            q = self._sites.queue(topic)
            try:
                change = self._decode(msg, q.site)
            except DecodeError as exc:
                q.filling.read(tp, offset, now)
                q.filling.dead(DeadLetter.of(msg, exc.category, str(exc)))
                continue
            except RegistryError as exc:
                # The bytes may be fine; the registry is not. Read this partition again from
                # this record once it answers; the other partitions go on.
                log.warning(
                    "schema registry unavailable (%s); reading %s[%d] again in %.0fs",
                    exc,
                    topic,
                    partition,
                    self._policy.retry_after,
                )
                self._consumer.trigger_backpressure({tp: offset}, self._policy.retry_after)
                rewound.add(tp)
                continue
            q.filling.read(tp, offset, now)
            entry = Pending(change, tp, offset, msg.value(), fingerprint(change), now)
            self._sites.put(q, entry, self._applied.get(tp, entry.key))

    def _call(self) -> None:
        """One sink call: each site with changes ready gets its fair share of the room."""
        room = self._limiter.max_release(self._policy.call_size)
        taken = self._sites.take(self._fair, room, self._applied)
        entries = [e for _q, part in taken for e in part.entries]
        if not entries:
            # All of it was already held by the top layer: nothing to write, nothing to pace.
            self._sites.settle(taken, {})
            return
        # The windows this call applies the last changes of: their offsets go with it.
        finished = finishing(taken)
        progress = self._offsets.progress(finished)
        started = time.monotonic()
        try:
            result = self._sink.apply([e.change for e in entries], progress)
        except SinkBackpressureError as exc:
            log.warning("sink asked to slow down (%s); retrying in %.1fs", exc, exc.retry_after)
            self._metrics.batches.labels("backpressure").inc()
            self._pacer.back_off(exc.retry_after)
            return
        if result.progress_stored:
            for closed in finished:
                closed.offsets_stored = True
        self._pacer.applied(len(entries), started)
        self._metrics.call_applied(result.written, result.stale, (e.change for e in entries))
        if result.stale:
            log.warning(
                "the sink holds a higher sequence of %d key(s) of this call: their records "
                "were not written (cascade_consumer_stale_records_total)",
                result.stale,
            )
        refused = {change.key: reason for change, reason in result.rejected}
        self._sites.settle(taken, refused)
        self._applied.remember(e for e in entries if e.key not in refused)

    def _finish_windows(self) -> None:
        """Deliver the dead letters of every closed window applied in full, then checkpoint
        them all (`Offsets.checkpoint`: one commit); a site whose dead letters or offsets must
        wait tries again `retry_after` later."""
        now = time.monotonic()
        ready = []
        for q, closed in self._sites.finished(now):
            window = closed.window
            if window.dead_letters:
                if not self._dlq.deliver(window.dead_letters):
                    q.retry_due = now + self._policy.retry_after
                    continue
                window.dead_letters = []  # delivered: not again if storing must wait
            ready.append((q, closed))
        self._offsets.checkpoint(closed for _q, closed in ready)
        for q, closed in ready:
            if closed.offsets_stored:
                self._sites.done(q)
            else:
                q.retry_due = now + self._policy.retry_after

    def _enforce_cap(self) -> None:
        """Pause the partitions of the sites `Sites.over_cap` holds; resume the others."""
        total, held = self._sites.over_cap(self._policy.max_pending_keys)
        self.max_pending = max(self.max_pending, total)
        if held is not None:
            self._consumer.hold({tp for tp in self._offsets.assigned if tp[0] in held})

    def _on_assign(self, partitions: list[Partition]) -> dict[Partition, int] | None:
        self.assign_events += 1
        return self._offsets.assign(partitions)

    def _on_revoke(self, partitions: list[Partition]) -> None:
        self._offsets.revoke(partitions)
        self._forget(partitions)

    def _on_lost(self, partitions: list[Partition]) -> None:
        self._offsets.lose(partitions)
        self._forget(partitions)

    def _forget(self, partitions: list[Partition]) -> None:
        self._sites.drop(partitions, still_assigned=self._offsets.assigned)
        self._applied.forget(partitions)
        self._closer.forget(partitions)

    def __repr__(self) -> str:
        return (
            f"TopConsumer(pattern={self._pattern!r}, pending={self._sites.pending()}, "
            f"paused={len(self._consumer.paused)}, limiter={self._limiter!r})"
        )
