"""A fenced transactional producer says so, and fails once, whichever call meets the fence first:
a send, a begin, a commit, an abort, or librdkafka adding a partition to the transaction in the
background (ADDPARTS: heard only through `error_cb`, served by `poll`), also while a commit is
being retried. The client is a real librdkafka producer pointed at no broker whose
transactional calls fail as each test says (`make_client`): no broker is needed to show what
the wrapper makes of each error."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import KafkaError

from connector.kafka.producer import DeliveryCallback, Producer
from connector.kafka.settings import KafkaSettings
from connector.kafka.transactions import ProducerFenced, TransactionalProducer, TransactionFailed

#: librdkafka's own codes (FATAL, ._FENCED, ._TIMED_OUT), by number: a test names
#: no private member.
FATAL, FENCED, TIMED_OUT = -150, -144, -185
#: The line the election's logs are read for.
FENCED_LINE = "fenced by a newer producer of the same id"
#: What librdkafka's error_cb says when a background request finds the producer fenced: its
#: bare _FATAL, the cause only in the text.
ADDPARTS = KafkaError(
    FATAL,
    "Fatal error: Local: This instance has been fenced by a newer instance: Failed to add "
    "partitions to transaction: Local: This instance has been fenced by a newer instance",
)


class FailingCalls(Producer):
    """A producer whose transactional calls named in `raises` raise their error; `poll` hears
    `background` through `error_cb` (as librdkafka serves it). Sends queue nothing."""

    def __init__(
        self,
        settings: KafkaSettings,
        on_error: Callable[[str], None] | None = None,
        *,
        raises: Mapping[str, KafkaError],
        background: KafkaError | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(settings, on_error, **overrides)
        self.raises = dict(raises)
        self.background = background

    def _call(self, name: str) -> None:
        if name in self.raises:
            raise confluent_kafka.KafkaException(self.raises[name])

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        self._call("begin")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        on_delivery: DeliveryCallback,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        self._call("produce")

    def poll(self, timeout: float = 0.0) -> None:
        if self.background is not None:
            self.heard(self.background)

    def flush(self, timeout: float = 60.0) -> None:
        pass


Make = Callable[..., tuple[TransactionalProducer, list[TransactionFailed]]]


@pytest.fixture
def make(caplog: pytest.LogCaptureFixture) -> Iterator[Make]:
    """make(raises=..., background=...) -> a transactional producer over FailingCalls, and
    the failures its `on_failure` was told of."""
    caplog.set_level(logging.ERROR, logger="connector.kafka.transactions")
    made: list[TransactionalProducer] = []

    def make_(**failing: Any) -> tuple[TransactionalProducer, list[TransactionFailed]]:
        failures: list[TransactionFailed] = []
        producer = TransactionalProducer(
            KafkaSettings(bootstrap="127.0.0.1:9"),
            "site-a",
            {},
            failures.append,
            make_client=partial(FailingCalls, **{"raises": {}, **failing}),
        )
        made.append(producer)
        return producer, failures

    yield make_
    for producer in made:
        producer.close()


def send(producer: TransactionalProducer) -> None:
    producer.produce("t", "k", b"v", lambda _k, _e, _p, _o: None)


def assert_fenced_once(failures: list[TransactionFailed], caplog: pytest.LogCaptureFixture) -> None:
    assert len(failures) == 1 and isinstance(failures[0], ProducerFenced), failures
    lines = [r.getMessage() for r in caplog.records if FENCED_LINE in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("produce", KafkaError.PRODUCER_FENCED),
        ("begin", FENCED),
    ],
)
def test_a_send_or_begin_that_meets_the_fence_says_fenced(
    make: Make, caplog: pytest.LogCaptureFixture, call: str, code: int
) -> None:
    producer, failures = make(raises={call: KafkaError(code, "fenced", fatal=True)})
    send(producer)
    assert_fenced_once(failures, caplog)


def test_a_commit_refused_for_an_old_epoch_says_fenced(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    producer, failures = make(
        raises={"commit": KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "old epoch")}
    )
    send(producer)
    producer.poll()
    assert_fenced_once(failures, caplog)


def test_an_abort_that_meets_the_fence_says_fenced(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    producer, failures = make(raises={"abort": KafkaError(FENCED, "fenced", fatal=True)})
    send(producer)
    producer.purge()
    assert_fenced_once(failures, caplog)


@pytest.mark.parametrize(
    "heard",
    [ADDPARTS, KafkaError(FENCED, "fenced by a newer instance", fatal=True)],
    ids=["bare-fatal", "flagged-fatal"],
)
def test_a_fence_heard_in_the_background_says_fenced_at_the_next_poll(
    make: Make, caplog: pytest.LogCaptureFixture, heard: KafkaError
) -> None:
    producer, failures = make(background=heard)
    send(producer)
    producer.poll()
    assert_fenced_once(failures, caplog)


def test_a_fence_heard_while_a_commit_is_retried_says_fenced(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    timed_out = KafkaError(TIMED_OUT, "timed out", retriable=True)
    producer, failures = make(raises={"commit": timed_out}, background=ADDPARTS)
    send(producer)
    with pytest.raises(ProducerFenced):
        producer.flush(5.0)
    assert_fenced_once(failures, caplog)


def test_a_send_that_finds_the_producer_unusable_takes_the_cause_heard(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    bare = KafkaError(FATAL, "Unable to produce message: Local: Fatal error", fatal=True)
    producer, failures = make(raises={"produce": bare}, background=ADDPARTS)
    send(producer)
    assert_fenced_once(failures, caplog)


def test_another_fatal_error_fails_the_producer_without_saying_fenced(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    other = KafkaError(FATAL, "Fatal error: Broker: Out of order sequence number")
    producer, failures = make(background=other)
    send(producer)
    producer.poll()
    assert len(failures) == 1 and not isinstance(failures[0], ProducerFenced), failures
    assert not any(FENCED_LINE in r.getMessage() for r in caplog.records)
