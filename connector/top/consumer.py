"""The top consumer loop: read site topics, coalesce by key, apply in batches, then commit.

One thread drives everything. A batch fills to its size or its wait, the sink applies it in one
call, dead letters are delivered, and only then are exactly the applied offsets committed. Two
things can hold the loop: the rate limit and a sink asking to slow down. While held, the
partitions are paused and the loop keeps polling, so the group never evicts this member and the
backlog stays in Kafka. A sink's "slow down" rolls the batch back (seek to its first offsets) and
commits nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import confluent_kafka
from confluent_kafka import TopicPartition

from connector.errors import KafkaError
from connector.kafka.consumer import Consumer
from connector.kafka.producer import Producer
from connector.records.errors import DecodeError, RegistryError
from connector.records.model import Change, StatusRecord
from connector.sinks.base import Sink, SinkBackpressureError
from connector.top.batch import Batch, DeadLetter
from connector.top.metrics import ConsumerMetrics
from connector.top.rate import RateLimiter

log = logging.getLogger(__name__)

#: Turns one Kafka message into a Change; raises DecodeError for bad bytes.
Decoder = Callable[[confluent_kafka.Message], Change]

#: Rate-limit waits up to this many seconds are slept through; longer ones pause the partitions.
SHORT_WAIT = 1.0

#: How long to back off when dead letters could not be delivered or the registry is away.
RETRY_SECONDS = 5.0


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
        self._batch_limit = limiter.max_release(policy.size)
        self._batch = Batch()
        self._committed: dict[tuple[str, int], int] = {}
        self.assign_events = 0  #: rebalances that gave this member partitions
        self._held = False
        self._backoff_until = 0.0
        self._stop = threading.Event()
        self.last_poll = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to finish; safe from a signal handler or another thread."""
        self._stop.set()

    def run(self, until_idle: bool = False) -> None:
        """Consume until `stop()`, or (with `until_idle`) until every assigned partition is
        applied and committed to its end."""
        if self._batch_limit < self._policy.size:
            log.info(
                "batch size capped at %d records by max rate %s/s, so that a one-second window "
                "stays within 5%% of the rate",
                self._batch_limit,
                self._limiter.max_rate,
            )
        self._consumer.subscribe(self._pattern, self._on_assign, self._on_revoke, self._on_lost)
        try:
            while not self._stop.is_set():
                if self._step() and until_idle and self._caught_up():
                    log.info("every assigned partition is applied and committed to its end")
                    return
        finally:
            self._consumer.close()

    def _step(self) -> bool:
        """One turn of the loop; True when it found nothing to do."""
        now = time.monotonic()
        if now < self._backoff_until:
            self._hold(self._backoff_until, self._metrics.backpressure_seconds)
            return False
        batch = self._batch
        ready = len(batch) >= self._batch_limit or (
            batch.started is not None and now - batch.started >= self._policy.wait
        )
        if not ready:
            self._release_hold()
            timeout = 0.5 if batch.started is None else batch.started + self._policy.wait - now
            messages = self._consumer.consume(self._batch_limit - len(batch), max(0.0, timeout))
            self.last_poll = time.monotonic()
            self._take(messages)
            return not messages and not len(batch)
        delay = self._limiter.delay()
        if delay > SHORT_WAIT:
            self._hold(now + delay, self._metrics.rate_limited_seconds)
            return False
        if delay > 0:
            # Too short to be worth a pause: pausing drops librdkafka's prefetched records, and
            # fetching them again costs more than the wait. The group is heartbeated meanwhile.
            self._stop.wait(delay)
            self._metrics.rate_limited_seconds.inc(delay)
        self._flush()
        return False

    def _take(self, messages: list[confluent_kafka.Message]) -> None:
        now = time.monotonic()
        for msg in messages:
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            self._batch.add(topic, partition, offset, now)
            self._metrics.records.labels(topic.removeprefix(self._prefix)).inc()
            try:
                self._batch.put(self._decode(msg), topic, partition, offset, msg.value())
            except DecodeError as exc:
                self._batch.dead(
                    DeadLetter(topic, partition, offset, msg.key(), msg.value(), "decode", str(exc))
                )

    def _flush(self) -> None:
        batch, self._batch = self._batch, Batch()
        changes = batch.changes
        applied = 0
        if changes:
            started = time.monotonic()
            try:
                result = self._sink.apply(changes)
            except (SinkBackpressureError, RegistryError) as exc:
                retry_after = getattr(exc, "retry_after", RETRY_SECONDS)
                log.warning("sink asked to slow down (%s); retrying in %.1fs", exc, retry_after)
                self._roll_back(batch, retry_after)
                return
            self._metrics.apply_seconds.observe(time.monotonic() - started)
            applied = result.written
            for change, reason in result.rejected:
                batch.dead(batch.rejected(change, reason))
        if batch.dead_letters and not self._deliver_dead_letters(batch.dead_letters):
            self._roll_back(batch, RETRY_SECONDS)
            return
        self._commit(batch)
        self._limiter.release(len(batch))
        self._metrics.batches.labels("applied").inc()
        self._metrics.rows_applied.inc(applied)
        self._metrics.coalesced.inc(batch.coalesced)
        for change in changes:
            if isinstance(change, StatusRecord) and change.is_heartbeat:
                self._metrics.heartbeats.observed[change.site] = change.observed_at.timestamp()

    def _commit(self, batch: Batch) -> None:
        offsets = batch.commit_offsets()
        for tp in offsets:
            previous = self._committed.get((tp.topic, tp.partition), -1)
            if tp.offset < previous:
                raise KafkaError(
                    f"refusing to commit {tp.topic}[{tp.partition}]@{tp.offset}: "
                    f"behind the committed {previous}"
                )
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:
            # The batch is applied; whoever reads these partitions next re-applies it, which the
            # sink's sequence check makes harmless. Surface the error, keep going.
            self._metrics.commit_errors.inc()
            log.error("%s", exc)
            return
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset
            lag = self._consumer.high_watermark(tp.topic, tp.partition, cached=True) - tp.offset
            self._metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))

    def _roll_back(self, batch: Batch, retry_after: float) -> None:
        self._metrics.batches.labels("backpressure").inc()
        self._consumer.pause(self._consumer.assignment())
        self._held = True
        for tp in batch.seek_offsets():
            self._consumer.seek(tp)
        self._backoff_until = time.monotonic() + retry_after

    def _deliver_dead_letters(self, letters: list[DeadLetter]) -> bool:
        failures: list[str] = []

        def on_delivery(key: str, err: object, _partition: int, _offset: int) -> None:
            if err is not None:
                failures.append(f"{key}: {err}")

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
        try:
            self._dlq.flush(30.0)
        except KafkaError as exc:
            failures.append(str(exc))
        if failures:
            log.error("dead letters not delivered, will retry the batch: %s", "; ".join(failures))
            return False
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

    def _hold(self, until: float, counter: object) -> None:
        """Pause every assigned partition and keep polling until `until` (or stop)."""
        started = time.monotonic()
        self._consumer.pause(self._consumer.assignment())
        self._held = True
        while not self._stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                break
            # Partitions assigned during the hold are not paused yet; what they deliver joins the
            # batch, which is bounded by librdkafka's small prefetch.
            messages = self._consumer.consume(1, min(0.1, left))
            self.last_poll = time.monotonic()
            if messages:
                self._take(messages)
                self._consumer.pause(self._consumer.assignment())
        getattr(counter, "inc")(time.monotonic() - started)  # noqa: B009

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
        # Everything applied is already committed (we commit right after each apply); what is
        # buffered for these partitions was not applied, and the next owner reads it again.
        self._batch.drop_partitions(partitions)
        for tp in partitions:
            self._committed.pop((tp.topic, tp.partition), None)
        log.info("revoked %s", _names(partitions))

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        self._batch.drop_partitions(partitions)
        for tp in partitions:
            self._committed.pop((tp.topic, tp.partition), None)
        log.warning("lost %s (dropped their buffered records)", _names(partitions))

    def _caught_up(self) -> bool:
        if not self.assign_events or len(self._batch):
            return False
        for tp in self._consumer.assignment():
            committed = self._committed.get((tp.topic, tp.partition))
            high = self._consumer.high_watermark(tp.topic, tp.partition)
            if high > 0 and (committed is None or committed < high):
                return False
        return True

    def __repr__(self) -> str:
        return (
            f"TopConsumer(pattern={self._pattern!r}, batch={len(self._batch)}, "
            f"held={self._held}, limiter={self._limiter!r})"
        )


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
