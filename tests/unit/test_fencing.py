"""A fenced transactional producer says so, and fails once, whichever call meets the fence first:
a send, a begin, a commit, an abort, or librdkafka adding a partition to the transaction in the
background (ADDPARTS), whose cause it raises once, from whichever call serves it, and then only
a bare _FATAL to a send (test_ha's paused active said "transaction failed: ... Local: Fatal
error"; seen so against the real broker). The client is a real librdkafka producer pointed at no
broker whose transactional calls fail as each test says (`make_client`), and as librdkafka does
once fenced in the background: no broker is needed to show what the wrapper makes of each."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import KafkaError

from connector.kafka.producer import DeliveryCallback, Producer
from connector.kafka.settings import KafkaSettings
from connector.kafka.transactions import ProducerFenced, TransactionalProducer, TransactionFailed

#: librdkafka's own codes (KafkaError._FATAL, ._FENCED), by number: a test names no private
#: member.
FATAL, FENCED = -150, -144
#: The line the election's logs are read for.
FENCED_LINE = "fenced by a newer producer of the same id"
#: What a send raises once the producer is unusable, as librdkafka raised it (not flagged fatal).
BARE_FATAL = KafkaError(FATAL, "Unable to produce message: Local: Fatal error")
#: The cause of the background fence, as librdkafka's transactional calls raise it.
ADDPARTS = KafkaError(
    FENCED,
    "Failed to add partitions to transaction: Local: This instance has been fenced by a newer "
    "instance",
    fatal=True,
)


class FailingCalls(Producer):
    """A producer whose transactional calls named in `raises` raise their error, and that
    `fence` makes fail as librdkafka does once fenced in the background. Sends queue nothing."""

    def __init__(
        self,
        settings: KafkaSettings,
        on_error: Callable[[str], None] | None = None,
        *,
        raises: Mapping[str, KafkaError],
        **overrides: Any,
    ) -> None:
        super().__init__(settings, on_error, **overrides)
        self.raises = dict(raises)
        #: the background fence's cause, and whether a call that serves the queue raises it yet
        self.cause: KafkaError | None = None
        self.unserved = False

    def fence(self, cause: KafkaError, served_elsewhere: bool = False) -> None:
        """Fenced in the background; `served_elsewhere`: another call (another thread's, say)
        served the cause already, so none of ours hears it but as a bare _FATAL."""
        self.cause, self.unserved = cause, not served_elsewhere

    def _call(self, name: str) -> None:
        if name in self.raises:
            raise confluent_kafka.KafkaException(self.raises[name])
        if self.cause is not None and name != "produce":
            raise confluent_kafka.KafkaException(self.cause)

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
        if self.cause is not None:
            raise confluent_kafka.KafkaException(BARE_FATAL)

    def poll(self, timeout: float = 0.0) -> None:
        if self.unserved and self.cause is not None:
            self.unserved = False
            raise confluent_kafka.KafkaException(self.cause)

    def flush(self, timeout: float = 60.0) -> None:
        pass


class Made:
    """A transactional producer over FailingCalls, its client, and the failures its
    `on_failure` was told of."""

    def __init__(self, raises: Mapping[str, KafkaError]) -> None:
        self.failures: list[TransactionFailed] = []
        clients: list[FailingCalls] = []

        def make_client(*args: Any, **kwargs: Any) -> FailingCalls:
            clients.append(FailingCalls(*args, raises=raises, **kwargs))
            return clients[-1]

        self.producer = TransactionalProducer(
            KafkaSettings(bootstrap="127.0.0.1:9"),
            "site-a",
            {},
            self.failures.append,
            make_client=make_client,
        )
        self.client = clients[0]

    def send(self) -> None:
        self.producer.produce("t", "k", b"v", lambda _k, _e, _p, _o: None)


@pytest.fixture
def make(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Made]]:
    """make(raises={call: error}) -> a Made; its producers closed at the end."""
    caplog.set_level(logging.ERROR, logger="connector.kafka.transactions")
    made: list[Made] = []

    def make_(raises: Mapping[str, KafkaError] | None = None) -> Made:
        made.append(Made(raises or {}))
        return made[-1]

    yield make_
    for one in made:
        one.producer.close()


def fenced_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if FENCED_LINE in r.getMessage()]


def assert_fenced_once(made: Made, caplog: pytest.LogCaptureFixture) -> None:
    assert len(made.failures) == 1, made.failures
    assert isinstance(made.failures[0], ProducerFenced), made.failures
    assert len(fenced_lines(caplog)) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    ("call", "code"),
    [("produce", KafkaError.PRODUCER_FENCED), ("begin", FENCED)],
)
def test_a_send_or_begin_that_meets_the_fence_says_fenced(
    make: Callable[..., Made], caplog: pytest.LogCaptureFixture, call: str, code: int
) -> None:
    made = make({call: KafkaError(code, "fenced", fatal=True)})
    made.send()
    assert_fenced_once(made, caplog)


def test_a_commit_refused_for_an_old_epoch_says_fenced(
    make: Callable[..., Made], caplog: pytest.LogCaptureFixture
) -> None:
    made = make({"commit": KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "old epoch")})
    made.send()
    made.producer.poll()
    assert_fenced_once(made, caplog)


def test_an_abort_that_meets_the_fence_says_fenced(
    make: Callable[..., Made], caplog: pytest.LogCaptureFixture
) -> None:
    made = make({"abort": KafkaError(FENCED, "fenced", fatal=True)})
    made.send()
    made.producer.purge()
    assert_fenced_once(made, caplog)


def test_a_fence_found_in_the_background_says_fenced_at_the_poll_that_serves_it(
    make: Callable[..., Made], caplog: pytest.LogCaptureFixture
) -> None:
    made = make()
    made.send()
    made.client.fence(ADDPARTS)
    made.producer.poll()
    assert_fenced_once(made, caplog)


def test_a_send_that_finds_the_producer_unusable_learns_the_fence_not_a_bare_fatal(
    make: Callable[..., Made], caplog: pytest.LogCaptureFixture
) -> None:
    # The cause was raised to a call that did not report it; a send now gets only _FATAL.
    made = make()
    made.send()
    made.client.fence(ADDPARTS, served_elsewhere=True)
    made.send()
    assert_fenced_once(made, caplog)
    assert "Local: Fatal error" not in str(made.failures[0])


def test_another_fatal_error_fails_the_producer_without_saying_fenced(
    make: Callable[..., Made], caplog: pytest.LogCaptureFixture
) -> None:
    made = make()
    made.send()
    made.client.fence(
        KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "out of order", fatal=True),
        served_elsewhere=True,
    )
    made.send()
    assert len(made.failures) == 1, made.failures
    assert not isinstance(made.failures[0], ProducerFenced)
    assert "out of order" in str(made.failures[0])
    assert fenced_lines(caplog) == []
