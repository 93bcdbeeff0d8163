"""Dead letters: records that could not be decoded or that the sink refused, delivered to the
dead-letter topic with headers saying why, before their offsets are committed.

Delivery is all or nothing per call: on any failure what is still queued is purged (so a retry
does not deliver it twice) and the caller retries later; after `MAX_ATTEMPTS` failed deliveries
in a row the consumer stops with an error rather than stall silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from connector.errors import KafkaError
from connector.kafka import KafkaException, Message
from connector.kafka.producer import Producer
from connector.top.consumer_metrics import ConsumerMetrics

log = logging.getLogger(__name__)

#: Deliveries in a row that failed before the consumer gives up.
MAX_ATTEMPTS = 5


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

    @classmethod
    def of(cls, msg: Message, reason: str, detail: str) -> DeadLetter:
        """The dead letter of the consumed record `msg`."""
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        return cls(topic, partition, offset, msg.key(), msg.value(), reason, detail)

    @property
    def partition_key(self) -> tuple[str, int]:
        return (self.topic, self.partition)


class DeadLetterDelivery(Protocol):
    """What the top consumer loop calls of its dead-letter queue (tests fake it)."""

    def deliver(self, letters: Sequence[DeadLetter]) -> bool: ...

    def close(self) -> None: ...


class DeadLetterQueue:
    """Delivers dead letters to one topic and counts failed attempts."""

    def __init__(self, producer: Producer, topic: str, metrics: ConsumerMetrics) -> None:
        self._producer = producer
        self.topic = topic
        self._metrics = metrics
        self._failures = 0

    def deliver(self, letters: Sequence[DeadLetter]) -> bool:
        """Deliver `letters` and wait for it; False if any failed (retry later). Raises
        KafkaError after MAX_ATTEMPTS failures in a row."""
        failures: list[str] = []

        def on_delivery(key: str, err: object, _partition: int, _offset: int) -> None:
            if err is not None:
                failures.append(f"{key}: {err}")

        try:
            for letter in letters:
                self._producer.produce(
                    self.topic,
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
            self._producer.flush(30.0)
        except (KafkaError, KafkaException) as exc:
            failures.append(str(exc))
        if failures:
            self._producer.purge()
            self._failures += 1
            detail = "; ".join(failures[:5])
            if self._failures >= MAX_ATTEMPTS:
                raise KafkaError(
                    f"dead letters could not be delivered to {self.topic} "
                    f"{self._failures} times in a row: {detail}"
                )
            log.error("dead letters not delivered, will retry: %s", detail)
            return False
        self._failures = 0
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

    def close(self) -> None:
        try:
            self._producer.flush(10.0)
        finally:
            self._producer.close()
