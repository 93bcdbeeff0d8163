"""The group consumer reads a topic's own delete.retention.ms from the broker (the offsets
check of a restored database judges each topic by it, not by the settings)."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from connector.kafka.group_consumer import Consumer
from connector.kafka.settings import KafkaSettings


def test_delete_retention_is_each_topics_own(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    altered, default = unique_name("altered"), unique_name("default")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = [
        NewTopic(altered, 1, 1, config={"delete.retention.ms": "60000"}),
        NewTopic(default, 1, 1),
    ]
    for future in admin.create_topics(topics).values():
        future.result(timeout=30)
    consumer = Consumer(KafkaSettings(bootstrap=kafka_bootstrap), unique_name("group"))
    try:
        found = consumer.delete_retention([altered, default])
    finally:
        consumer.close()
    # The broker's default (one day) for the topic that sets none.
    assert found == {altered: 60.0, default: 86_400.0}
