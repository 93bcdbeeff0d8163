"""The lag gauge's ends: the last stable offset of every assigned partition, asked on a thread.

The loop never waits for this question. It says which partitions are its own (`want`) and takes
the latest answer when there is a new one (`take`); a thread of its own asks the broker for all
of them in one request every LAG_SECONDS, within LAG_TIMEOUT. Asked from the loop, the request
held it up to LAG_TIMEOUT at every refresh, and a consumer of many sites with a slow broker was
seen waiting there (docs/performance.md). A question that gets no answer only leaves the gauge
as it was (`offsets.Offsets.publish_lag` sets it).

librdkafka's client must outlive every call on it: `quiet` holds the questions off, waiting for
one under way (it returns within its timeout, LAG_TIMEOUT) before the loop replaces its client
(`rejoin`), and `stop` waits for it, as long at most, before the loop closes the client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from connector.errors import KafkaError
from connector.kafka.client import RepeatedErrors
from connector.kafka.group_consumer import Partition
from connector.top.group import GroupConsumer

log = logging.getLogger(__name__)

#: The refresh fails every LAG_SECONDS while the broker is out of reach: one line, then counts.
_LAG_ERRORS = RepeatedErrors(log)

#: Seconds between two questions for the ends of every assigned partition (with thousands of
#: partitions, one each second was a large share of the broker's and the client's time;
#: docs/performance.md), and the most one question waits for the broker's answer.
LAG_SECONDS = 5.0
LAG_TIMEOUT = 1.0
#: Seconds `quiet` and `stop` wait beyond LAG_TIMEOUT for a question under way to return.
_RETURN_MARGIN = 0.5


class LagEnds:
    """The ends of the partitions the loop wants, asked every `every` seconds on a thread."""

    def __init__(
        self, consumer: GroupConsumer, every: float = LAG_SECONDS, timeout: float = LAG_TIMEOUT
    ) -> None:
        self._consumer = consumer
        self._every = every
        self._timeout = timeout
        #: guards `_wanted` and `_answer`, shared by the loop and the thread
        self._lock = threading.Lock()
        self._wanted: frozenset[Partition] = frozenset()
        self._answer: dict[Partition, int] | None = None
        #: held while a question is under way, and by `quiet`
        self._asking = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def want(self, partitions: frozenset[Partition]) -> None:
        """Ask for the ends of `partitions` from now on (the thread starts with the first)."""
        with self._lock:
            self._wanted = partitions
        if self._thread is None and partitions and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="lag-ends", daemon=True)
            self._thread.start()

    def take(self) -> dict[Partition, int] | None:
        """The ends the broker told since the last `take`, or None when there is no new answer."""
        with self._lock:
            answer, self._answer = self._answer, None
        return answer

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """No question is under way or starts in the block (a question under way is waited for,
        LAG_TIMEOUT and a little more at most; past that the block runs anyway)."""
        held = self._asking.acquire(timeout=self._timeout + _RETURN_MARGIN)
        try:
            yield
        finally:
            if held:
                self._asking.release()

    def stop(self) -> None:
        """Ask no more; wait for a question under way to return (as long as `quiet` at most)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout + _RETURN_MARGIN)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                wanted = self._wanted
            if wanted:
                ends = self._ask(wanted)
                if ends is not None:
                    with self._lock:
                        self._answer = ends
            self._stop.wait(self._every)

    def _ask(self, partitions: frozenset[Partition]) -> dict[Partition, int] | None:
        with self._asking:
            if self._stop.is_set():
                return None
            try:
                return self._consumer.stable_ends(partitions, timeout=self._timeout)
            # RuntimeError: confluent-kafka's "Consumer closed"
            except (KafkaError, RuntimeError) as exc:
                _LAG_ERRORS.report(logging.WARNING, f"cannot refresh the lag gauge: {exc}")
        return None
