"""Dead letters: records that could not be turned into a change, or that the sink refused,
delivered to the dead-letter topic with headers saying why, before their offsets are committed.

A dead letter always fits what Kafka accepts: the error text and the copied key are cut to a
bound, and so is the copied value past its own bound, each cut saying the original size in a
header (`original.key.bytes`, `original.value.bytes`, the error's last words). Delivery is all
or nothing per call: on any failure what is still queued is purged and the caller retries later
(the window waits, its offsets uncommitted); each failed attempt is counted, each distinct error
logged once and then counted every half minute while it lasts (`RepeatedErrors`), and none ends
the process: dead letters that cannot be delivered hold their site's commits, never the
consumer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from connector.errors import KafkaError
from connector.kafka import KafkaException, Message
from connector.kafka.client import RepeatedErrors, close_within
from connector.kafka.producer import Producer
from connector.records.errors import WrongSiteError
from connector.top.consumer_metrics import ConsumerMetrics

log = logging.getLogger(__name__)
#: A dead-letter topic refusing every attempt alike (retried each loop turn it is due): a line
#: per distinct error, then counts, not a line per attempt.
_DELIVERY_ERRORS = RepeatedErrors(log)

#: The most bytes of the error text a dead letter carries (a header).
MAX_ERROR_BYTES = 1024
#: The most bytes of the original key a dead letter carries.
MAX_KEY_BYTES = 1024
#: Bytes of a dead letter left for all but the value: the key and headers above, and Kafka's
#: framing. The copied value is cut to the message size the dead-letter producer may send (the
#: topic's max.message.bytes, at most librdkafka's default message.max.bytes, 1,000,000) less
#: this, which a record near the site topic's own limit would pass otherwise, failing every
#: delivery and holding its site's commits for good.
OVERHEAD_BYTES = 10_000
#: The most bytes of the original value a dead letter carries to a topic of the default limit.
MAX_VALUE_BYTES = 1_000_000 - OVERHEAD_BYTES
#: Seconds one delivery may wait for the broker; the loop waits with it, and so does a stop
#: (10 s in all): what is not delivered by then is purged and retried later.
FLUSH_SECONDS = 5.0
#: Seconds closing the producer may take at a stop (librdkafka's destroy has no deadline).
CLOSE_SECONDS = 2.0
#: Dead letters of one delivery logged one line each; the rest in one line of counts by reason
#: (a hostile topic made a line per letter, 92,209 of them in one run; each letter is in the
#: dead-letter topic with its reason and detail).
LOGGED_PER_DELIVERY = 5


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


@dataclass(frozen=True)
class Bounded:
    """What is produced for one dead letter: key, value and headers, each within its bound."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def bounded(letter: DeadLetter, max_value: int = MAX_VALUE_BYTES) -> Bounded:
    """`letter` as produced: the original key and value (cut past their bounds, the value's
    `max_value`, the original size in a header) and the headers saying why."""
    headers = {
        "reason": letter.reason.encode(),
        "error": _cut_text(letter.detail, MAX_ERROR_BYTES),
        "original.topic": letter.topic.encode(),
        "original.partition": str(letter.partition).encode(),
        "original.offset": str(letter.offset).encode(),
    }
    key, value = letter.key, letter.value
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers["original.key.bytes"] = str(len(key)).encode()
        key = key[:MAX_KEY_BYTES]
    if value is not None and len(value) > max_value:
        headers["original.value.bytes"] = str(len(value)).encode()
        value = value[:max_value]
    return Bounded(key, value, headers)


def _cut_text(text: str, limit: int) -> bytes:
    data = text.encode()
    if len(data) <= limit:
        return data
    tail = f"... (cut: {len(data)} bytes in all)".encode()
    # Cut on a character boundary, so the header stays valid UTF-8.
    return data[: limit - len(tail)].decode(errors="ignore").encode() + tail


class DeadLetterQueue:
    """Delivers dead letters to one topic, each within `max_message` bytes (what `producer`
    may send), and counts failed attempts; `errors` logs them."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        metrics: ConsumerMetrics,
        errors: RepeatedErrors = _DELIVERY_ERRORS,
        max_message: int = MAX_VALUE_BYTES + OVERHEAD_BYTES,
    ) -> None:
        self._producer = producer
        self.topic = topic
        #: the most bytes of a value copied, for a message of at most `max_message` bytes
        self._max_value = max(0, max_message - OVERHEAD_BYTES)
        self._metrics = metrics
        self._errors = errors
        self._failures = 0  #: failed deliveries in a row

    def deliver(self, letters: Sequence[DeadLetter]) -> bool:
        """Deliver `letters` and wait for it; False if any failed (counted, logged: retry
        later)."""
        failures: dict[str, str] = {}  #: each error -> the key of the first letter it failed

        def on_delivery(key: str, err: object, _partition: int, _offset: int) -> None:
            if err is not None:
                failures.setdefault(str(err), key[:100])

        try:
            for letter in letters:
                out = bounded(letter, self._max_value)
                self._producer.produce(
                    self.topic,
                    key=out.key,
                    value=out.value,
                    on_delivery=on_delivery,
                    headers=out.headers,
                )
            self._producer.flush(FLUSH_SECONDS)
        except (KafkaError, KafkaException) as exc:
            failures.setdefault(str(exc), "")
        if failures:
            self._producer.purge()
            self._failures += 1
            self._metrics.dead_letter_failures.inc()
            for error, key in failures.items():
                first = f" ({key} first)" if key else ""
                self._errors.report(
                    logging.ERROR,
                    error,
                    f"dead letters not delivered to {self.topic}, will retry{first}: ",
                )
            return False
        if self._failures:
            log.info(
                "dead letters delivered to %s again after %d failures", self.topic, self._failures
            )
        self._failures = 0
        unlogged: Counter[str] = Counter()
        for n, letter in enumerate(letters):
            self._metrics.dead_letters.labels(letter.reason).inc()
            if letter.reason == WrongSiteError.category:
                self._metrics.wrong_site.labels(letter.topic).inc()
            if n >= LOGGED_PER_DELIVERY:
                unlogged[letter.reason] += 1
                continue
            log.warning(
                "dead letter %s[%d]@%d (%s): %s",
                letter.topic,
                letter.partition,
                letter.offset,
                letter.reason,
                letter.detail[:MAX_ERROR_BYTES],
            )
        if unlogged:
            log.warning(
                "and %d more dead letters delivered to %s (%s)",
                unlogged.total(),
                self.topic,
                ", ".join(f"{reason} {count}" for reason, count in sorted(unlogged.items())),
            )
        return True

    def close(self) -> None:
        try:
            self._producer.flush(FLUSH_SECONDS)
        finally:
            close_within(self._producer.close, CLOSE_SECONDS, "close the dead-letter producer")
