"""The heartbeat-age metric: a site's age counts on the top's own clock from when its heartbeat
was applied (a site clock an hour ahead reads as a fresh heartbeat, not an hour-old or future
one; how late it came is a metric apart), and the site leaves the metric when this member's
partitions of it are revoked or lost (else `CascadeSiteStale` fired after every rebalance)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import confluent_kafka
import pytest
from prometheus_client import CollectorRegistry

from connector.kafka.group_consumer import Partition, PartitionsCallback
from connector.records.codec import Codec
from connector.records.messages import change_from_message, to_message
from connector.records.model import HEARTBEAT_KIND, Change, StatusRecord
from connector.sinks import ApplyResult
from connector.sinks.base import Progress, SiteAvailability
from connector.top.availability import Availability, AvailabilityMetrics, AvailabilityPolicy
from connector.top.closing import WindowPolicy
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.loop import TopConsumer
from connector.top.offsets import ResumePolicy
from connector.top.rate import RateLimiter
from tests.support import wait_for

TOPIC = "status.a"
AGE = "cascade_site_heartbeat_age_seconds"
DELAY = "cascade_site_heartbeat_delay_seconds"


class OneHeartbeat:
    """A member assigned partition 0 of site a's topic, which holds one heartbeat; then, when
    told, that partition is revoked or lost."""

    def __init__(self, message: confluent_kafka.Message) -> None:
        self.message: confluent_kafka.Message | None = message
        self.callbacks: tuple[PartitionsCallback, ...] = ()
        self.take_away: str | None = None
        self.gone = threading.Event()

    def subscribe(self, _pattern: str, *callbacks: PartitionsCallback) -> None:
        self.callbacks = callbacks

    def consume(self, _max: int, timeout: float) -> list[Any]:
        on_assign, on_revoke, on_lost = self.callbacks
        if self.message is not None:
            on_assign([(TOPIC, 0)])
            message, self.message = self.message, None
            return [message]
        if self.take_away is not None:
            (on_revoke if self.take_away == "revoke" else on_lost)([(TOPIC, 0)])
            self.take_away = None
            self.gone.set()
        self.gone.wait(min(timeout, 0.01))
        return []

    def committed(self, _partitions: Collection[Partition], timeout: float) -> dict[Partition, int]:
        return {}

    def positions(self, _partitions: Collection[Partition]) -> dict[Partition, int]:
        return {}

    def watermarks(self, _topic: str, _partition: int, **_kw: object) -> tuple[int, int]:
        return (0, 1)

    def hold(self, _partitions: Collection[Partition]) -> None:
        pass

    def commit(self, _offsets: dict[Partition, int]) -> None:
        pass

    def close(self) -> None:
        pass


class Applying:
    def __init__(self) -> None:
        self.applied: list[Change] = []

    def apply(self, changes: Sequence[Change], progress: Progress | None = None) -> ApplyResult:
        self.applied += changes
        return ApplyResult(written=len(changes))

    def stored_offsets(
        self, group: str, partitions: Collection[Partition]
    ) -> dict[Partition, int] | None:
        return None

    def set_availability(self, states: Sequence[SiteAvailability]) -> None:
        pass


class DeadLetters:
    def close(self) -> None:
        pass


@pytest.mark.parametrize("take_away", ["revoke", "lost"])
def test_age_is_the_tops_clock_and_a_site_leaves_with_its_partitions(take_away: str) -> None:
    now = [datetime(2026, 12, 1, tzinfo=UTC).timestamp()]
    # The site's clock is an hour ahead of the top's.
    stamped = datetime.fromtimestamp(now[0], UTC) + timedelta(hours=1)
    beat = StatusRecord("a", HEARTBEAT_KIND, "a", "ok", 1, stamped, details={"poll.interval": 10})
    codec = Codec()
    msg = to_message(beat, codec)
    consumer = OneHeartbeat(
        confluent_kafka.Message(topic=TOPIC, partition=0, offset=0, key=msg.key, value=msg.value)
    )
    sink = Applying()
    registry = CollectorRegistry()
    loop = TopConsumer(
        consumer=consumer,  # type: ignore[arg-type]
        pattern=r"^status\..+",
        topic_prefix="status",
        decode=lambda m, site: change_from_message(m, codec, site),
        sink=sink,  # type: ignore[arg-type]
        dead_letters=DeadLetters(),  # type: ignore[arg-type]
        limiter=RateLimiter(None, None),
        policy=WindowPolicy(call_size=10, wait=0.01, max_wait=1.0, max_pending_keys=100),
        metrics=ConsumerMetrics(registry, clock=lambda: now[0]),
        availability=Availability(AvailabilityPolicy(), AvailabilityMetrics(CollectorRegistry())),
        resume=ResumePolicy("top", "status", 86_400.0),
    )
    thread = threading.Thread(target=loop.run, name="top-consumer-under-test")
    thread.start()
    try:
        wait_for(lambda: sink.applied == [beat], 10, "the heartbeat applied")
        wait_for(lambda: registry.get_sample_value(AGE, {"site": "a"}) is not None, 10, "its age")
        assert registry.get_sample_value(AGE, {"site": "a"}) == 0.0
        assert registry.get_sample_value(DELAY, {"site": "a"}) == -3600.0
        now[0] += 7.5
        assert registry.get_sample_value(AGE, {"site": "a"}) == 7.5
        consumer.take_away = take_away
        wait_for(consumer.gone.is_set, 10, f"the partition {take_away}")
        wait_for(lambda: registry.get_sample_value(AGE, {"site": "a"}) is None, 10, "age dropped")
        assert registry.get_sample_value(DELAY, {"site": "a"}) is None
    finally:
        loop.stop()
        thread.join(10)
    assert not thread.is_alive()
