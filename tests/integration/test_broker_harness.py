"""Proves the harness against the real broker: compacted topic, idempotent keyed produce with a
tombstone, manual-commit consume, committed offsets."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic


def test_compacted_topic_round_trip(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                topic, num_partitions=2, replication_factor=1, config={"cleanup.policy": "compact"}
            )
        ]
    )
    futures[topic].result(timeout=30)
    described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    config = next(iter(described.values())).result(timeout=30)
    assert config["cleanup.policy"].value == "compact"

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"}
    )
    delivered: list[tuple[str, int, int]] = []
    errors: list[KafkaException] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(KafkaException(err))
        else:
            key, partition, offset = msg.key(), msg.partition(), msg.offset()
            assert key is not None and partition is not None and offset is not None
            delivered.append((key.decode(), partition, offset))

    for i in range(10):
        producer.produce(
            topic, key=f"site/server/{i}", value=f"v{i}".encode(), on_delivery=on_delivery
        )
    producer.produce(topic, key="site/server/3", value=None, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []
    assert len(delivered) == 11

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    consumer.subscribe([topic])
    seen: dict[str, bytes | None] = {}
    last: dict[int, int] = {}
    try:
        while len(seen) < 10 or "site/server/3" not in seen or seen["site/server/3"] is not None:
            msg = consumer.poll(10)
            assert msg is not None, f"timed out; saw {len(seen)} keys"
            assert msg.error() is None, msg.error()
            key, partition, offset = msg.key(), msg.partition(), msg.offset()
            assert key is not None and partition is not None and offset is not None
            seen[key.decode()] = msg.value()
            last[partition] = offset
        committed_to = [TopicPartition(topic, p, o + 1) for p, o in last.items()]
        result = consumer.commit(offsets=committed_to, asynchronous=False)
        assert all(tp.error is None for tp in result)
        committed = consumer.committed([TopicPartition(topic, p) for p in last], timeout=30)
    finally:
        consumer.close()

    assert seen["site/server/3"] is None, "the tombstone arrives as a null value"
    assert {k: v for k, v in seen.items() if v is not None} == {
        f"site/server/{i}": f"v{i}".encode() for i in range(10) if i != 3
    }
    expected: dict[int, int] = {}
    for _key, partition, offset in delivered:
        expected[partition] = max(expected.get(partition, -1), offset + 1)
    assert {tp.partition: tp.offset for tp in committed} == expected
