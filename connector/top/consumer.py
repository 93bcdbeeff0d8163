"""The top consumer loop: read site topics, coalesce by key, apply in batches, then commit.

One thread drives everything. A batch fills to its size or its wait and keeps the last change
per key; the sink applies those changes, in as many calls as the rate limit needs (each call one
transaction); dead letters are delivered; and only then are exactly the offsets read committed. Two
things can hold the loop: the rate limit and a sink (or schema registry) asking to slow down.
While held, the partitions are paused and the loop keeps polling, so the group never evicts this
member and the backlog stays in Kafka. A "slow down" rolls the batch back (seek to its first
offsets) and commits nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from connector.errors import KafkaError
from connector.kafka import KafkaException, Message, TopicPartition
from connector.kafka.consumer import Consumer
from connector.kafka.producer import Producer
from connector.ops.cleanup import cleanup_after
from connector.records.errors import DecodeError, RegistryError
from connector.records.model import Change, StatusRecord
from connector.sinks.base import Sink, SinkBackpressureError
from connector.top.batch import Batch, DeadLetter, Partition
from connector.top.metrics import ConsumerMetrics
from connector.top.rate import RateLimiter

log = logging.getLogger(__name__)

#: Turns one Kafka message into a Change; raises DecodeError for bad bytes.
Decoder = Callable[[Message], Change]

#: Rate-limit waits up to this many seconds are slept through; longer ones pause the partitions.
SHORT_WAIT = 1.0

#: How long to back off when dead letters could not be delivered or the registry is away.
RETRY_SECONDS = 5.0

#: Batches in a row whose dead letters could not be delivered before the consumer gives up.
DEAD_LETTER_ATTEMPTS = 5

#: Seconds between two checks of the group's progress for `--until-idle`.
IDLE_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch is ready, and where dead letters go."""

    size: int  #: records consumed per batch at most
    wait: float  #: seconds a batch may wait for more records once it has one
    dead_letter_topic: str


class TopConsumer:
    """Applies every site topic matching `pattern` to `sink`, at the rate `limiter` allows."""

    def __init__(
        self,
        consumer: Consumer,
        pattern: str,
        topic_prefix: str,
        decode: Decoder,
        sink: Sink,
        dead_letters: Producer,
        limiter: RateLimiter,
        policy: BatchPolicy,
        metrics: ConsumerMetrics,
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
        # Exported so a dashboard can draw rows/s against the limit.
        metrics.max_rate.set(limiter.max_rate or 0)
        self._batch = Batch()
        self._committed: dict[Partition, int] = {}
        #: offsets applied whose commit failed; retried with the next commit
        self._uncommitted: dict[Partition, int] = {}
        self._released: deque[tuple[float, int]] = deque()
        self._dlq_failures = 0
        self.max_per_second = 0  #: the most records released within any one second
        self.assign_events = 0  #: rebalances that gave this member partitions
        self._held = False
        self._backoff_until = 0.0
        self._next_idle_check = 0.0
        self._stop = threading.Event()
        self.last_poll = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to finish; safe from a signal handler or another thread."""
        self._stop.set()

    def run(self, until_idle: bool = False) -> None:
        """Consume until `stop()`, or (with `until_idle`) until every partition of every site
        topic is applied and committed to its end by the group."""
        # A failing close or flush must not hide why the loop ended.
        with cleanup_after(self._consumer.close, lambda: self._dlq.flush(10.0)):
            self._consumer.subscribe(self._pattern, self._on_assign, self._on_revoke, self._on_lost)
            while not self._stop.is_set():
                if self._step() and until_idle and self._group_caught_up():
                    log.info("every site partition is applied and committed to its end")
                    return

    def _step(self) -> bool:
        """One turn of the loop; True when it found nothing to do."""
        now = time.monotonic()
        if now < self._backoff_until:
            self._hold(self._backoff_until, self._metrics.backpressure_seconds)
            return False
        batch = self._batch
        ready = len(batch) >= self._policy.size or (
            batch.started is not None and now - batch.started >= self._policy.wait
        )
        if not ready:
            self._release_hold()
            timeout = 0.5 if batch.started is None else batch.started + self._policy.wait - now
            messages = self._consumer.consume(self._policy.size - len(batch), max(0.0, timeout))
            self.last_poll = time.monotonic()
            self._take(messages)
            idle = not messages and not len(self._batch)
            if idle and self._uncommitted:
                self._commit({})
            return idle
        self._flush()
        return False

    def _wait_for_rate(self) -> bool:
        """Wait until the rate limit lets the next sink call go; False if asked to stop."""
        delay = self._limiter.delay()
        if delay > SHORT_WAIT:
            self._hold(time.monotonic() + delay, self._metrics.rate_limited_seconds)
        elif delay > 0:
            # Too short to be worth a pause: pausing drops librdkafka's prefetched records, and
            # fetching them again costs more than the wait. The group is heartbeated meanwhile.
            self._metrics.rate_limited_seconds.inc(delay)
            self._stop.wait(delay)
        return not self._stop.is_set()

    def _take(self, messages: list[Message]) -> None:
        now = time.monotonic()
        for i, msg in enumerate(messages):
            topic, partition, offset = _coordinates(msg)
            self._batch.add(topic, partition, offset, now)
            try:
                self._batch.put(self._decode(msg), topic, partition, offset, msg.value())
            except DecodeError as exc:
                self._batch.undecodable_record(
                    DeadLetter(topic, partition, offset, msg.key(), msg.value(), "decode", str(exc))
                )
            except RegistryError as exc:
                # The bytes may be fine; the registry is not. Read this and every later record
                # of the batch again once it answers.
                for later in messages[i + 1 :]:
                    self._batch.add(*_coordinates(later), now)
                log.warning(
                    "schema registry unavailable (%s); retrying in %.0fs", exc, RETRY_SECONDS
                )
                self._roll_back(self._batch, RETRY_SECONDS)
                return

    def _flush(self) -> None:
        """Apply the batch's changes in sink calls the rate limit allows, then commit."""
        batch, self._batch = self._batch, Batch()
        changes = batch.changes
        applied = 0
        step = self._limiter.max_release(len(changes))
        for start in range(0, len(changes), step):
            part = changes[start : start + step]
            if not self._wait_for_rate():
                # Stopping: nothing is committed; whoever reads next applies the batch again,
                # which the sink's sequence check makes harmless for the part already applied.
                return
            started = time.monotonic()
            try:
                result = self._sink.apply(part)
            except SinkBackpressureError as exc:
                log.warning("sink asked to slow down (%s); retrying in %.1fs", exc, exc.retry_after)
                self._roll_back(batch, exc.retry_after)
                return
            self._metrics.apply_seconds.observe(time.monotonic() - started)
            self._metrics.batches.labels("applied").inc()
            self._limiter.release(len(part))
            self._count_release(len(part))
            applied += result.written
            for change, reason in result.rejected:
                batch.dead(batch.rejected(change, reason))
        if batch.dead_letters and not self._deliver_dead_letters(batch.dead_letters):
            self._roll_back(batch, RETRY_SECONDS)
            return
        self._commit({(tp.topic, tp.partition): tp.offset for tp in batch.commit_offsets()})
        for topic, n in batch.records_by_topic().items():
            self._metrics.records.labels(topic.removeprefix(self._prefix)).inc(n)
        self._metrics.rows_applied.inc(applied)
        self._metrics.coalesced.inc(batch.coalesced)
        for change in changes:
            if isinstance(change, StatusRecord) and change.is_heartbeat:
                self._metrics.heartbeats.observed[change.site] = change.observed_at.timestamp()

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
        try:
            self._consumer.commit([TopicPartition(t, p, o) for (t, p), o in pending.items()])
        except KafkaError as exc:
            # The batch is applied; the commit is retried with the next one (or when idle), and
            # whoever reads these partitions meanwhile re-applies it, which the sink's sequence
            # check makes harmless.
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

    def _count_release(self, records: int) -> None:
        now = time.monotonic()
        self._released.append((now, records))
        while now - self._released[0][0] > 1.0:
            self._released.popleft()
        in_window = sum(n for _t, n in self._released)
        if in_window > self.max_per_second:
            self.max_per_second = in_window
            self._metrics.max_per_second.set(in_window)

    def _roll_back(self, batch: Batch, retry_after: float) -> None:
        self._metrics.batches.labels("backpressure").inc()
        self._consumer.pause(self._consumer.assignment())
        self._held = True
        for tp in batch.seek_offsets():
            self._consumer.seek(tp)
        self._batch = Batch()
        self._backoff_until = time.monotonic() + retry_after

    def _deliver_dead_letters(self, letters: list[DeadLetter]) -> bool:
        failures: list[str] = []

        def on_delivery(key: str, err: object, _partition: int, _offset: int) -> None:
            if err is not None:
                failures.append(f"{key}: {err}")

        try:
            for letter in letters:
                self._dlq.produce(
                    self._policy.dead_letter_topic,
                    key=letter.key,
                    value=letter.value,
                    on_delivery=on_delivery,
                    headers={
                        "reason": letter.reason.encode(),
                        "error": letter.detail.encode(),
                        "original.topic": letter.topic.encode(),
                        "original.partition": str(letter.partition).encode(),
                        "original.offset": str(letter.offset).encode(),
                    },
                )
            self._dlq.flush(30.0)
        except (KafkaError, KafkaException) as exc:
            failures.append(str(exc))
        if failures:
            # Drop what is still queued, so the retry does not deliver it twice.
            self._dlq.purge()
            self._dlq_failures += 1
            detail = "; ".join(failures[:5])
            if self._dlq_failures >= DEAD_LETTER_ATTEMPTS:
                raise KafkaError(
                    f"dead letters could not be delivered to {self._policy.dead_letter_topic} "
                    f"{self._dlq_failures} times in a row: {detail}"
                )
            log.error("dead letters not delivered, will retry the batch: %s", detail)
            return False
        self._dlq_failures = 0
        for letter in letters:
            self._metrics.dead_letters.labels(letter.reason).inc()
            log.warning(
                "dead letter %s[%d]@%d (%s): %s",
                letter.topic,
                letter.partition,
                letter.offset,
                letter.reason,
                letter.detail,
            )
        return True

    def _hold(self, until: float, counter: Counter) -> None:
        """Pause every assigned partition and keep polling until `until` (or stop)."""
        started = time.monotonic()
        self._consumer.pause(self._consumer.assignment())
        self._held = True
        while not self._stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                break
            for msg in self._consumer.consume(1, min(0.1, left)):
                # A partition assigned during the hold is not paused yet: put its record back
                # and pause it too.
                topic, partition, offset = _coordinates(msg)
                self._consumer.seek(TopicPartition(topic, partition, offset))
                self._consumer.pause(self._consumer.assignment())
            self.last_poll = time.monotonic()
        counter.inc(time.monotonic() - started)

    def _release_hold(self) -> None:
        if self._held:
            self._consumer.resume(self._consumer.assignment())
            self._held = False

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self.assign_events += 1
        for tp in self._consumer.committed(partitions):
            if tp.offset >= 0:
                self._committed[(tp.topic, tp.partition)] = tp.offset
        log.info("assigned %s", _names(partitions))

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Everything applied is committed right after its apply (a failed commit is retried
        # here, once more); what is buffered for these partitions was not applied, and the next
        # owner reads it again.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        if gone & self._uncommitted.keys():
            self._commit({})
        self._forget(partitions)
        log.info("revoked %s", _names(partitions))

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        log.warning("lost %s (dropped their buffered records)", _names(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self._batch.drop_partitions(partitions)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._committed.pop(key, None)
            self._uncommitted.pop(key, None)
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(tp.topic, str(tp.partition))

    def _group_caught_up(self) -> bool:
        """True when the group has committed every site partition to its end (checked at most
        once a second: it asks the broker)."""
        now = time.monotonic()
        if now < self._next_idle_check or len(self._batch) or self._uncommitted:
            return False
        self._next_idle_check = now + IDLE_CHECK_SECONDS
        try:
            partitions = self._consumer.partitions_matching(self._pattern)
            committed = {
                (tp.topic, tp.partition): tp.offset for tp in self._consumer.committed(partitions)
            }
            for tp in partitions:
                low, high = self._consumer.watermarks(tp.topic, tp.partition)
                if high > low and committed.get((tp.topic, tp.partition), -1) < high:
                    return False
        except KafkaError as exc:
            log.warning("cannot tell whether the group is idle yet: %s", exc)
            return False
        return True

    def __repr__(self) -> str:
        return (
            f"TopConsumer(pattern={self._pattern!r}, batch={len(self._batch)}, "
            f"held={self._held}, limiter={self._limiter!r})"
        )


def _coordinates(msg: Message) -> tuple[str, int, int]:
    return msg.topic() or "", msg.partition() or 0, msg.offset() or 0


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
