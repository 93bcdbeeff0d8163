"""The no-assignment watchdog's rules, on an injected clock and an injected answer from Kafka."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from connector.errors import KafkaError
from connector.kafka.group_consumer import Partition
from connector.top.watchdog import AssignmentWatchdog


class Kafka:
    """What the watchdog asks: the partitions no other member reads (or an outage)."""

    def __init__(self, unserved: Sequence[Partition] = ()) -> None:
        self.unserved = list(unserved)
        self.down = False
        self.asked = 0

    def __call__(self) -> Sequence[Partition]:
        self.asked += 1
        if self.down:
            raise KafkaError("cannot describe consumer group g: timed out")
        return self.unserved


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watchdog(kafka: Kafka, clock: Clock) -> AssignmentWatchdog:
    return AssignmentWatchdog(after=60.0, unserved=kafka, clock=clock)


def test_a_member_without_partitions_while_others_go_unread_rejoins() -> None:
    kafka, clock = Kafka([("cascade.status.a", 0), ("cascade.status.b", 0)]), Clock()
    dog = watchdog(kafka, clock)
    assert not dog.check(holding=False)
    clock.now += 59
    assert not dog.check(holding=False)
    assert kafka.asked == 0, "Kafka is not asked before the bound"
    clock.now += 1
    assert dog.check(holding=False)
    assert dog.stalled is not None
    assert "no partition for 60 s" in dog.stalled
    assert "cascade.status.a[0], cascade.status.b[0]" in dog.stalled


def test_the_new_client_gets_the_bound_again_and_the_stall_is_said_until_a_partition_comes() -> (
    None
):
    kafka, clock = Kafka([("cascade.status.a", 0)]), Clock()
    dog = watchdog(kafka, clock)
    dog.check(holding=False)
    clock.now += 60
    assert dog.check(holding=False)
    clock.now += 30
    assert not dog.check(holding=False)
    assert dog.stalled is not None, "/readyz keeps saying so while nothing is held"
    clock.now += 30
    assert dog.check(holding=False), "a new client stuck too is replaced again"
    assert not dog.check(holding=True)
    assert dog.stalled is None


def test_an_idle_member_of_a_group_with_more_members_than_partitions_is_left_alone() -> None:
    kafka, clock = Kafka([]), Clock()
    dog = watchdog(kafka, clock)
    dog.check(holding=False)
    for _ in range(600):  # ten minutes of turns, one a second
        clock.now += 1
        assert not dog.check(holding=False)
    assert dog.stalled is None
    assert kafka.asked == 10, "asked once per bound, not once per turn"


def test_kafka_not_answering_is_an_outage_not_a_stall() -> None:
    kafka, clock = Kafka([("cascade.status.a", 0)]), Clock()
    kafka.down = True
    dog = watchdog(kafka, clock)
    dog.check(holding=False)
    clock.now += 60
    assert not dog.check(holding=False)
    assert dog.stalled is None
    kafka.down = False
    clock.now += 30
    assert not dog.check(holding=False), "asked again a bound after the failed asking"
    clock.now += 30
    assert dog.check(holding=False)


@pytest.mark.parametrize("holding_at", [10.0, 59.0])
def test_a_partition_held_in_between_starts_the_bound_again(holding_at: float) -> None:
    kafka, clock = Kafka([("cascade.status.a", 0)]), Clock()
    dog = watchdog(kafka, clock)
    start = clock.now
    dog.check(holding=False)
    clock.now = start + holding_at
    dog.check(holding=True)
    clock.now = start + 60
    assert not dog.check(holding=False)
    clock.now = start + 60 + 60
    assert dog.check(holding=False)


def test_many_unread_partitions_are_named_in_part() -> None:
    kafka, clock = Kafka([("cascade.status.s", p) for p in range(12)]), Clock()
    dog = watchdog(kafka, clock)
    dog.check(holding=False)
    clock.now += 60
    assert dog.check(holding=False)
    assert dog.stalled is not None
    assert dog.stalled.endswith("cascade.status.s[4] and 7 more")
