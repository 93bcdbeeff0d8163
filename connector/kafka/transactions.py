"""The transactional producer a site's active poller publishes through, and how it is fenced.

One `transactional.id` per site: creating the producer calls `init_transactions()`, which makes
the broker abort whatever transaction an earlier producer of that id left open and refuse that
producer from then on (fenced). The fenced producer learns it from whichever call meets it
first: a send, adding a partition to its transaction (librdkafka's ADDPARTS, in the
background: raised once by whichever call serves it, then only a bare _FATAL), a commit, an
abort, a begin; each is the same failure (`ProducerFenced`), said in the same line.
Messages go out in transactions committed by `poll()` (the runner calls it five times a
second) and by `flush()`; readers that read committed records only never see what a fenced
producer sent after the take-over, nor its unfinished transaction.

Threads produce concurrently while one commits: a lock keeps `produce` out of a commit, and
delivery reports are handed to their callbacks only after that lock is released, because those
callbacks take their caller's own locks (the publisher's). Once a transaction fails (fenced,
or an error that requires an abort), the producer stops: later messages are reported as failed,
`on_failure` is called once, and `flush()` raises the failure. The caller then drops the
producer and whatever it believed was published; a successor restores from the topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import confluent_kafka

from connector.errors import KafkaError
from connector.kafka.producer import DeliveryCallback, Producer
from connector.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Seconds `init_transactions` may take (it waits for an earlier producer's transaction to end).
INIT_TIMEOUT = 60.0
#: Seconds one commit attempt may take; retriable failures (a timeout too: the next attempt
#: resumes the same commit) are retried until COMMIT_DEADLINE, or a `flush`'s own timeout. The
#: attempts are short so that `interrupt()` (a stop) is seen between them within a second.
COMMIT_TIMEOUT = 1.0
COMMIT_DEADLINE = 60.0
#: Seconds between the lines that say a commit still fails (a broker outage retries it about
#: once a second: one line each would drown the log).
RETRY_LOG_EVERY = 10.0
#: Seconds the abort of `purge` may take: it runs while the process stops.
ABORT_TIMEOUT = 2.0
#: Seconds `_fail` waits to hear why librdkafka calls the producer unusable (_FATAL): the
#: cause reaches `error_cb` through the event queue, served by `poll`.
FATAL_CAUSE_WAIT = 1.0
#: The broker aborts a transaction left open this long, so a paused producer with no successor
#: holds up read-committed readers of its partitions for at most this long. librdkafka wants a
#: message's delivery timeout no longer, so it is the delivery timeout too.
TRANSACTION_TIMEOUT_MS = 60_000

_FENCED = {
    confluent_kafka.KafkaError._FENCED,
    confluent_kafka.KafkaError.PRODUCER_FENCED,
    confluent_kafka.KafkaError.INVALID_PRODUCER_EPOCH,
}
#: What `produce` raises once the producer is unusable (fatal, or no transaction can be open).
_UNUSABLE = {*_FENCED, confluent_kafka.KafkaError._FATAL, confluent_kafka.KafkaError._STATE}


class TransactionFailed(KafkaError):
    """A transaction could not be committed: nothing of it is visible to committed readers."""

    def __init__(self, message: str, kafka_error: confluent_kafka.KafkaError) -> None:
        super().__init__(message)
        self.kafka_error = kafka_error


class ProducerFenced(TransactionFailed):
    """A newer producer with the same transactional id took over; this one may not publish."""


class RetryLog:
    """Logs a failure that is retried over and over without a line per try: the first failure
    at once, then at most one line every `every` seconds with the count of tries so far, and a
    line when it succeeds again."""

    def __init__(
        self,
        what: str,
        every: float = RETRY_LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.every = every
        self._clock = clock
        self._since: float | None = None
        self._logged = 0.0
        self._tries = 0

    def failed(self, err: object) -> None:
        now = self._clock()
        self._tries += 1
        if self._since is None:
            self._since = self._logged = now
            log.warning("%s failed, retrying: %s", self.what, err)
        elif now - self._logged >= self.every:
            self._logged = now
            log.warning(
                "%s still failing after %.0f s (%d failed tries): %s",
                self.what,
                now - self._since,
                self._tries,
                err,
            )

    def succeeded(self) -> None:
        if self._since is None:
            return
        log.warning(
            "%s succeeded after %.1f s and %d failed tries",
            self.what,
            self._clock() - self._since,
            self._tries,
        )
        self._since = None
        self._tries = 0


class TransactionalProducer:
    """Publishes keyed values in transactions under `transactional_id`, through a `Producer`
    it owns (made with that id). `headers` are added to every message. Creating it fences any
    earlier producer of the id.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        transactional_id: str,
        headers: Mapping[str, bytes],
        on_failure: Callable[[TransactionFailed], None],
        on_error: Callable[[str], None] | None = None,
        make_client: Callable[..., Producer] = Producer,
        **overrides: Any,
    ) -> None:
        self._client = make_client(
            settings,
            on_error,
            **{
                "transactional.id": transactional_id,
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "delivery.timeout.ms": TRANSACTION_TIMEOUT_MS,
                **overrides,
            },
        )
        self.transactional_id = transactional_id
        self._headers = dict(headers)
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._reports: deque[tuple[DeliveryCallback, tuple[Any, ...]]] = deque()
        self._open = False
        self._commit_retries = RetryLog(f"commit of {transactional_id}")
        self.failure: TransactionFailed | None = None
        try:
            self._client.init_transactions(INIT_TIMEOUT)
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(
                f"cannot start transactions as {transactional_id}: {exc.args[0].str()}"
            ) from exc

    def __repr__(self) -> str:
        state = "failed" if self.failure else "open" if self._open else "idle"
        return f"TransactionalProducer({self.transactional_id}, {state})"

    def __len__(self) -> int:
        return len(self._client)

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        on_delivery: DeliveryCallback,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Queue one message in the open transaction (beginning one if none is open)."""

        def deferred(*report: Any) -> None:
            self._reports.append((on_delivery, report))

        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else (key or "")
        with self._lock:
            if self.failure is None:
                try:
                    if not self._open:
                        self._client.begin_transaction()
                        self._open = True
                    every = {**self._headers, **(headers or {})}
                    self._client.produce(topic, key, value, deferred, every)
                except confluent_kafka.KafkaException as exc:
                    if not _ends_transactions(exc.args[0]):
                        raise  # about this message (too large, say), not the producer
                    self._fail(exc.args[0])
            if self.failure is not None:
                self._reports.append((on_delivery, (name, self.failure.kafka_error, 0, -1)))
        self._dispatch()

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports and commit the open transaction; a failure is reported to
        `on_failure`, not raised."""
        try:
            self._client.poll(timeout)
        except confluent_kafka.KafkaException as exc:
            with self._lock:
                self._fail(exc.args[0])
        with self._lock:
            self._commit()
        self._dispatch()

    def flush(self, timeout: float = 60.0) -> None:
        """Commit the open transaction (which waits for its deliveries) within `timeout`; raise
        the failure if a transaction failed (or could not be committed in time)."""
        with self._lock:
            self._commit(timeout, flushing=True)
            if self.failure is None and not self._open:
                self._client.flush(timeout)
        self._dispatch()
        if self.failure is not None:
            raise self.failure

    def interrupt(self) -> None:
        """Make a `produce` waiting on a full queue give up, and a commit stop retrying: the
        process stops (its bounded flush commits what it can)."""
        self._client.interrupt()

    def purge(self) -> None:
        """Abort the open transaction: its messages are reported as failed."""
        with self._lock:
            if self._open and self.failure is None:
                try:
                    self._client.abort_transaction(ABORT_TIMEOUT)
                    self._open = False
                except confluent_kafka.KafkaException as exc:
                    self._fail(exc.args[0])
        try:
            self._client.poll(0)
        except confluent_kafka.KafkaException as exc:
            # Fenced meanwhile, say: the purge's reports are the failure's, as in poll().
            with self._lock:
                self._fail(exc.args[0])
        self._dispatch()

    def close(self) -> None:
        """Abort the open transaction, then destroy the client (see `Producer.close`)."""
        self.purge()
        self._client.close()

    def _commit(self, timeout: float = COMMIT_DEADLINE, flushing: bool = False) -> None:
        """Commit the open transaction, retrying what librdkafka says may be retried, for up to
        `timeout` seconds. Unless `flushing`, give up (the transaction stays open) once
        `interrupt()` was called: the stop's bounded flush commits it next. Holds the lock."""
        deadline = time.monotonic() + timeout
        while self._open and self.failure is None:
            try:
                self._client.commit_transaction(
                    max(0.1, min(COMMIT_TIMEOUT, deadline - time.monotonic()))
                )
                self._open = False
                self._commit_retries.succeeded()
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or time.monotonic() >= deadline:
                    self._fail(err)
                elif self._client.interrupted and not flushing:
                    return
                else:
                    self._commit_retries.failed(err)

    def _fail(self, err: confluent_kafka.KafkaError) -> None:
        """Stop for good after `err`. Holds the lock."""
        if self.failure is not None:
            return
        if err.code() == confluent_kafka.KafkaError._FATAL:
            err = self._fatal_cause(err)
        if err.code() in _FENCED:
            failure: TransactionFailed = ProducerFenced(
                f"{self.transactional_id}: fenced by a newer producer of the same id: {err.str()}",
                err,
            )
        else:
            failure = TransactionFailed(
                f"{self.transactional_id}: transaction failed: {err.str()}", err
            )
        self.failure = failure
        self._open = False
        log.error("%s", failure)
        self._on_failure(failure)

    def _fatal_cause(self, err: confluent_kafka.KafkaError) -> confluent_kafka.KafkaError:
        """Why the producer became unusable. librdkafka raises the cause (fenced, say) once,
        from whichever call serves it first, and from then on a send fails with only _FATAL
        (test_ha's paused active, fenced while adding a partition to its transaction, said
        "transaction failed: ... Local: Fatal error"); its transactional calls say the cause
        each time, at once: ask one (a begin), and serve the queue, where the cause may still
        wait, for up to FATAL_CAUSE_WAIT. Delivery reports served meanwhile are queued, not
        called. Holds the lock."""
        deadline = time.monotonic() + FATAL_CAUSE_WAIT
        while self._client.fatal is None:
            for ask in (self._client.begin_transaction, lambda: self._client.poll(0.05)):
                try:
                    ask()
                except confluent_kafka.KafkaException as exc:
                    cause: confluent_kafka.KafkaError = exc.args[0]
                    if cause.fatal() and cause.code() != err.code():
                        return cause
            if time.monotonic() >= deadline:
                return err
        return self._client.fatal

    def _dispatch(self) -> None:
        """Hand queued delivery reports to their callbacks, outside the lock."""
        while True:
            try:
                callback, report = self._reports.popleft()
            except IndexError:
                return
            callback(*report)


def _ends_transactions(err: confluent_kafka.KafkaError) -> bool:
    return bool(err.fatal() or err.txn_requires_abort() or err.code() in _UNUSABLE)
