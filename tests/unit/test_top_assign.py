"""The top consumer's assignment path: a read of the committed offsets that times out (the broker
busy with a rebalance) is retried from the loop with a doubling backoff, logged naming the
partitions, and never ends the loop or holds a stop. The real-broker version, with librdkafka's
own timeout, is in tests/integration/test_top_consumer.py."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Collection
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connector.errors import KafkaError
from connector.kafka.group_consumer import Partition, PartitionsCallback
from connector.top import loop as top
from connector.top.availability import Availability, AvailabilityMetrics, AvailabilityPolicy
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.loop import TopConsumer, WindowPolicy
from connector.top.rate import RateLimiter
from tests.support import wait_for

TIMED_OUT = (
    "cannot read committed offsets: KafkaError{code=_TIMED_OUT,val=-185,"
    'str="Failed to get committed offsets: Local: Timed out"}'
)
ASSIGNED = [("site.a", 0), ("site.a", 1)]


class SlowCoordinator:
    """A group member whose first poll assigns two partitions, and whose broker does not answer
    the first `timeouts` reads of their committed offsets."""

    def __init__(self, timeouts: int) -> None:
        self.timeouts = timeouts
        self.reads: list[tuple[float, frozenset[Partition], float]] = []
        self.on_assign: PartitionsCallback | None = None
        self.closed = False

    def subscribe(self, _pattern: str, on_assign: PartitionsCallback, *_rest: Any) -> None:
        self.on_assign = on_assign

    def consume(self, _max: int, timeout: float) -> list[Any]:
        if self.on_assign is not None:
            assign, self.on_assign = self.on_assign, None
            assign(list(ASSIGNED))
        time.sleep(min(timeout, 0.01))  # a poll waits; this one has nothing to give
        return []

    def committed(self, partitions: Collection[Partition], timeout: float) -> dict[Partition, int]:
        self.reads.append((time.monotonic(), frozenset(partitions), timeout))
        if len(self.reads) <= self.timeouts:
            raise KafkaError(TIMED_OUT)
        return {ASSIGNED[0]: 7}

    def positions(self, _partitions: Collection[Partition]) -> dict[Partition, int]:
        return {}

    def hold(self, _partitions: Collection[Partition]) -> None:
        pass

    def commit(self, _offsets: dict[Partition, int]) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class DeadLetters:
    def close(self) -> None:
        pass


def top_consumer(consumer: SlowCoordinator) -> TopConsumer:
    return TopConsumer(
        consumer=consumer,  # type: ignore[arg-type]
        pattern=r"^site\..+",
        topic_prefix="site",
        decode=lambda _msg, _site: pytest.fail("nothing to decode"),
        sink=None,  # type: ignore[arg-type]
        dead_letters=DeadLetters(),  # type: ignore[arg-type]
        limiter=RateLimiter(None, None),
        policy=WindowPolicy(call_size=10, wait=0.1, max_wait=1.0, max_pending_keys=100),
        metrics=ConsumerMetrics(CollectorRegistry()),
        availability=Availability(AvailabilityPolicy(), AvailabilityMetrics(CollectorRegistry())),
    )


def run_in_thread(loop: TopConsumer) -> tuple[threading.Thread, list[BaseException]]:
    failed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="top-consumer-under-test")
    thread.start()
    return thread, failed


def test_committed_offsets_that_time_out_are_read_again_with_a_doubling_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(top, "ASSIGN_RETRY_SECONDS", (0.2, 0.5))
    consumer = SlowCoordinator(timeouts=3)
    loop = top_consumer(consumer)
    caplog.set_level(logging.WARNING, logger=top.__name__)
    thread, failed = run_in_thread(loop)
    try:
        wait_for(lambda: len(consumer.reads) == 4 or failed, 10, "the fourth read")
        assert thread.is_alive() and not failed, failed
    finally:
        loop.stop()
        thread.join(5)
    assert not thread.is_alive() and not failed and consumer.closed
    assert len(consumer.reads) == 4, "read again after a read that succeeded"
    # What the fourth read found is what a commit is checked against: no going backwards.
    with pytest.raises(KafkaError, match=r"refusing to commit site\.a\[0\]@3"):
        loop._commit({ASSIGNED[0]: 3})
    assert all(read[1] == frozenset(ASSIGNED) for read in consumer.reads)
    assert all(read[2] == top.ASSIGN_READ_TIMEOUT for read in consumer.reads)
    times = [read[0] for read in consumer.reads]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 0.2 s, doubled to 0.4 s, then held at the 0.5 s cap; each a little later (one turn of
    # the loop, longer on a loaded machine), never sooner.
    backoffs = [0.2, 0.4, 0.5]
    assert all(b <= g < b + 1.0 for g, b in zip(gaps, backoffs, strict=True)), gaps
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all("site.a[0], site.a[1]" in w and "Local: Timed out" in w for w in warnings)
    assert [w.rsplit(" ", 1)[1] for w in warnings] == ["0.2s", "0.4s", "0.5s"]


def test_a_stop_during_the_backoff_ends_the_loop_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(top, "ASSIGN_RETRY_SECONDS", (60.0, 60.0))
    consumer = SlowCoordinator(timeouts=1000)
    loop = top_consumer(consumer)
    thread, failed = run_in_thread(loop)
    wait_for(lambda: consumer.reads, 10, "the first read")
    stopping = time.monotonic()
    loop.stop()
    thread.join(5)
    assert not thread.is_alive() and not failed and consumer.closed
    assert time.monotonic() - stopping < 1.0
    assert len(consumer.reads) == 1, "read again before its backoff was over"
