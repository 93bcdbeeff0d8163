"""Our librdkafka wrappers against the real broker: what the producer reports per delivery."""

from __future__ import annotations

from collections.abc import Callable

from connector.kafka.producer import Producer
from connector.kafka.settings import KafkaSettings
from tests.support.kafka import create_topic


def test_the_first_message_of_a_partition_is_reported_at_offset_0(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("topic")
    create_topic(kafka_bootstrap, topic, partitions=1, compact=False)
    producer = Producer(KafkaSettings(bootstrap=kafka_bootstrap))
    reports: list[tuple[str, object, int, int]] = []
    for key in ("first", "second"):
        producer.produce(topic, key, b"v", lambda *report: reports.append(report))
    producer.flush(30)
    assert reports == [("first", None, 0, 0), ("second", None, 0, 1)]
