"""Dead letters: always within what Kafka accepts (the error, key and value cut, the original
sizes said), and a delivery that keeps failing is counted, logged and retried, never the end of
the consumer. The real-broker version is in tests/integration/test_top_isolation.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connector.errors import KafkaError
from connector.kafka.client import RepeatedErrors
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.dead_letters import (
    LOGGED_PER_DELIVERY,
    MAX_ERROR_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    OVERHEAD_BYTES,
    DeadLetter,
    DeadLetterQueue,
    bounded,
)


def letter(
    key: bytes | None = b"a/server/x", value: bytes | None = b"v", detail: str = "bad"
) -> DeadLetter:
    return DeadLetter("status.a", 0, 7, key, value, "decode", detail)


def test_a_small_letter_is_copied_whole() -> None:
    out = bounded(letter())
    assert (out.key, out.value) == (b"a/server/x", b"v")
    assert out.headers == {
        "reason": b"decode",
        "error": b"bad",
        "original.topic": b"status.a",
        "original.partition": b"0",
        "original.offset": b"7",
    }


def test_error_key_and_value_are_cut_saying_their_original_size() -> None:
    # The error quotes a huge key (repr: four characters a byte), in characters of 2 bytes.
    out = bounded(letter(key=b"\xff" * 300_000, value=b"v" * 1_048_000, detail="é" * 600_000))
    assert out.key == b"\xff" * MAX_KEY_BYTES
    assert out.headers["original.key.bytes"] == b"300000"
    assert out.value == b"v" * MAX_VALUE_BYTES
    assert out.headers["original.value.bytes"] == b"1048000"
    error = out.headers["error"]
    assert len(error) <= MAX_ERROR_BYTES
    assert error.decode().endswith("(cut: 1200000 bytes in all)")
    size = len(out.key) + len(out.value) + sum(len(k) + len(v) for k, v in out.headers.items())
    assert size < 1_000_000, "over librdkafka's default message.max.bytes"


class FailingProducer:
    """A producer whose broker refuses every dead letter, until told otherwise."""

    def __init__(self) -> None:
        self.failing = True
        self.error = "Broker: Message size too large"
        self.produced: list[dict[str, Any]] = []
        self.purges = 0

    def produce(self, topic: str, **message: Any) -> None:
        if self.failing:
            raise KafkaError(self.error)
        self.produced.append(message)

    def flush(self, _timeout: float) -> None:
        pass

    def purge(self) -> None:
        self.purges += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_delivery_that_keeps_failing_is_counted_retried_and_logged_once_per_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer, clock = FailingProducer(), Clock()
    registry = CollectorRegistry()
    errors = RepeatedErrors(logging.getLogger("dlq-test"), clock=clock, background=False)
    queue = DeadLetterQueue(producer, "dlq", ConsumerMetrics(registry), errors)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    for _ in range(20):  # an attempt a second, as the loop retries a window's dead letters
        assert queue.deliver([letter()]) is False
        clock.now += 1
    assert producer.purges == 20
    assert registry.get_sample_value("cascade_consumer_dead_letter_delivery_failures_total") == 20
    assert lines() == [
        "dead letters not delivered to dlq, will retry: Broker: Message size too large"
    ]
    clock.now += 10
    assert queue.deliver([letter()]) is False
    assert len(lines()) == 2 and "repeated 20 times in the last 30 s" in lines()[-1], lines()

    producer.error = "Local: Queue full"
    assert queue.deliver([letter()]) is False
    assert len(lines()) == 3 and lines()[-1].endswith(": Local: Queue full"), "a new error"

    producer.failing = False
    assert queue.deliver([letter()]) is True
    assert len(producer.produced) == 1
    assert (
        registry.get_sample_value("cascade_consumer_dead_letters_total", {"reason": "decode"}) == 1
    )
    assert any("delivered to dlq again after 22 failures" in r.getMessage() for r in caplog.records)
    clock.now += 60
    errors.sweep()
    assert "no longer seen (21 times over 30 s)" in lines()[-2], lines()


def test_a_dead_letter_topic_taking_less_gets_values_cut_to_fit_it() -> None:
    producer = FailingProducer()
    producer.failing = False
    queue = DeadLetterQueue(
        producer,  # type: ignore[arg-type]
        "dlq",
        ConsumerMetrics(CollectorRegistry()),
        max_message=50_000,
    )
    assert queue.deliver([letter(value=b"v" * 300_000)])
    sent = producer.produced[0]
    assert sent["value"] == b"v" * (50_000 - OVERHEAD_BYTES)
    assert sent["headers"]["original.value.bytes"] == b"300000"


def test_many_letters_delivered_at_once_are_logged_a_few_then_counted_by_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer, registry = FailingProducer(), CollectorRegistry()
    producer.failing = False
    errors = RepeatedErrors(logging.getLogger("dlq-test"), background=False)
    queue = DeadLetterQueue(producer, "dlq", ConsumerMetrics(registry), errors)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO)
    wrong = DeadLetter("status.a", 0, 8, b"b/server/y", b"v", "wrong site", "site b")
    assert queue.deliver([letter()] * 40 + [wrong] * 10) is True
    assert len(producer.produced) == 50
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == LOGGED_PER_DELIVERY + 1, lines
    assert lines[-1] == "and 45 more dead letters delivered to dlq (decode 35, wrong site 10)"
    assert (
        registry.get_sample_value("cascade_consumer_dead_letters_total", {"reason": "decode"}) == 40
    )
