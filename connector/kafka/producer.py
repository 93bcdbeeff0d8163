"""The idempotent producer every Kafka write goes through.

Owns librdkafka's producer: safe defaults (idempotence, acks=all, compression, batching), a full
local queue turned into waiting rather than an exception, and delivery reports handed back to the
caller, so a failed delivery is surfaced and never dropped. Given a `transactional.id`, it also
makes librdkafka's transactional calls (guarded: they refuse a producer without one), which
`transactions.py` wraps with its locking, retries and fencing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import confluent_kafka

from connector.errors import KafkaError
from connector.kafka.client import log_client_error, new_client
from connector.kafka.errors import not_authorized
from connector.kafka.settings import KafkaSettings

#: (key, error or None, partition, offset) for every message, once librdkafka is done with it;
#: partition and offset are -1 when the message has none (a failed delivery).
DeliveryCallback = Callable[[str, "confluent_kafka.KafkaError | None", int, int], None]

PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "zstd",
    "linger.ms": 50,
    "batch.size": 1_000_000,
    # A delivery is retried by librdkafka until this runs out; after it the error reaches us.
    "delivery.timeout.ms": 120_000,
}


#: What the delivery reports of purged messages say.
_PURGED = {confluent_kafka.KafkaError._PURGE_QUEUE, confluent_kafka.KafkaError._PURGE_INFLIGHT}


#: What librdkafka refuses to queue because of the message itself, not the client's state.
_ABOUT_THE_MESSAGE = {
    confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
    confluent_kafka.KafkaError._INVALID_ARG,
}


class MessageRefused(KafkaError):
    """librdkafka refused to queue this one message (larger than `message.max.bytes`, say);
    the producer and the messages around it are fine."""


class ProduceInterrupted(KafkaError):
    """`interrupt()` was called while `produce` waited for room in a full local queue."""


class Producer:
    """Publishes keyed values; every delivery outcome reaches the callback passed to `produce`.

    A delivery refused for lack of an ACL is not retried: once its report is served, `produce`,
    `poll` and `flush` raise KafkaError naming the topic, so a misconfigured principal stops
    within seconds instead of resending for ever. `on_error` hears librdkafka's client-level
    errors (all brokers down, timeouts), besides the log, so the caller can report them.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        on_error: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        config = {**PRODUCER_DEFAULTS, **settings.client_config(**overrides)}
        #: the error that made the client unusable, as `error_cb` heard it (librdkafka's calls
        #: say only _FATAL from then on; the cause, fenced say, reaches `error_cb`)
        self.fatal: confluent_kafka.KafkaError | None = None

        def client_error(err: confluent_kafka.KafkaError) -> None:
            if err.fatal() and self.fatal is None:
                self.fatal = err
            log_client_error(err)
            if on_error is not None:
                on_error(str(err.str()))

        config.setdefault("error_cb", client_error)
        #: whether the transactional calls may be made (a `transactional.id` was given)
        self.transactional = "transactional.id" in config
        self._settings = settings
        #: what a message may take, said when one is refused for its size
        self._max_bytes = config.get("message.max.bytes", "librdkafka's default")
        self._producer = new_client(confluent_kafka.Producer, config)
        self._interrupted = threading.Event()
        #: the first authorization refusal, raised by every later call
        self.refused: KafkaError | None = None

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        on_delivery: DeliveryCallback,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Queue one message; waits (serving delivery reports) while the local queue is full,
        until `interrupt()` (then ProduceInterrupted: the message is not queued). MessageRefused
        when librdkafka will not queue this message (too large): nothing else is affected."""

        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else (key or "")
        # A partial, not a closure: fewer objects per message for the garbage collector to track
        # while the message is in flight.
        report = partial(self._report, topic, name, on_delivery)
        self._raise_refused()

        while True:
            try:
                self._producer.produce(
                    topic,
                    key=key.encode() if isinstance(key, str) else key,
                    value=value,
                    headers=dict(headers) if headers else None,
                    on_delivery=report,
                )
                break
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.code() not in _ABOUT_THE_MESSAGE:
                    raise
                size = ""
                if err.code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
                    size = f" (key, value and headers over message.max.bytes: {self._max_bytes})"
                raise MessageRefused(f"{topic}: {name}: {err.str()}{size}") from exc
            except BufferError:
                # A full queue means the broker is out of reach; a stop must not wait for it.
                if self._interrupted.is_set():
                    raise ProduceInterrupted(
                        f"stopped while the local queue was full ({len(self._producer)} queued)"
                    ) from None
                self._producer.poll(0.1)
        self.poll(0)

    def _report(
        self,
        topic: str,
        name: str,
        on_delivery: DeliveryCallback,
        err: confluent_kafka.KafkaError | None,
        msg: confluent_kafka.Message,
    ) -> None:
        if err is not None and self._interrupted.is_set() and err.code() in _PURGED:
            return  # dropped on purpose at a stop, reported there once for all
        if err is not None and self.refused is None:
            self.refused = not_authorized(self._settings, f"write topic {topic}", err)
        # Offset 0 is the first message of a partition, not a missing offset: only None and
        # librdkafka's negative "no offset" values become -1.
        partition, offset = msg.partition(), msg.offset()
        on_delivery(
            name,
            err,
            -1 if partition is None else partition,
            -1 if offset is None or offset < 0 else offset,
        )

    def interrupt(self) -> None:
        """Make a `produce` waiting on a full queue (now or later) give up: the process stops."""
        self._interrupted.set()

    @property
    def interrupted(self) -> bool:
        """Whether `interrupt()` was called."""
        return self._interrupted.is_set()

    def init_transactions(self, timeout: float) -> None:
        """Register the transactional id with its coordinator, fencing its earlier producers.
        These four calls raise librdkafka's KafkaException for `transactions.py` to read."""
        self._transactional("init_transactions").init_transactions(timeout)

    def begin_transaction(self) -> None:
        self._transactional("begin_transaction").begin_transaction()

    def commit_transaction(self, timeout: float) -> None:
        self._transactional("commit_transaction").commit_transaction(timeout)

    def abort_transaction(self, timeout: float) -> None:
        self._transactional("abort_transaction").abort_transaction(timeout)

    def _transactional(self, call: str) -> confluent_kafka.Producer:
        if not self.transactional:
            raise KafkaError(f"{call}: this producer has no transactional.id")
        return self._producer

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports."""
        self._producer.poll(timeout)
        self._raise_refused()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued message was delivered or failed; raise if any is still queued."""
        remaining = self._producer.flush(timeout)
        self._raise_refused()
        if remaining:
            raise KafkaError(f"{remaining} message(s) still undelivered after {timeout:.0f}s")

    def purge(self) -> None:
        """Drop every message not yet delivered; their delivery reports say so (purged), unless
        `interrupt()` was called: then the caller reports the purge and the reports are quiet."""
        self._producer.purge(in_queue=True, in_flight=True, blocking=True)
        self._producer.poll(0)

    def close(self) -> None:
        """Drop whatever is still queued (call after a flush) and destroy the client at once:
        left to garbage collection, its threads would go on reconnecting to a broker that is
        gone, and logging so, for as long as something holds the object. Not for a producer
        with a transaction open: librdkafka's close first aborts it, waiting for a coordinator
        that may be out of reach (for minutes with the broker stopped)."""
        self.purge()
        # `Producer.close` is newer than the oldest confluent-kafka this allows: without it the
        # client is left to garbage collection, as it always was.
        close = getattr(self._producer, "close", None)
        if close is not None:
            close()

    def _raise_refused(self) -> None:
        if self.refused is not None:
            raise self.refused

    def __len__(self) -> int:
        return len(self._producer)
