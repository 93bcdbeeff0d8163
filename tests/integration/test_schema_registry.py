"""The Schema Registry framing against a real registry with the Confluent-compatible API
(Apicurio Registry, /apis/ccompat/v7): records written by our codec through Kafka, read back by
confluent-kafka's own AvroDeserializer and by our codec; the schema registered under our subject.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.request import urlopen

from confluent_kafka import Consumer as RawConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connector.codecs import codec_from_settings
from connector.config import KafkaSettings
from connector.records.codec import REGISTRY_SUBJECT
from connector.records.model import StatusRecord
from tests.support.kafka import create_topic, publish

NOW = datetime(2026, 5, 4, 12, 30, tzinfo=UTC)
RECORDS = [
    StatusRecord(
        site="east", kind="server", id="8c1f7c6e-3b7a-4d6e-9a59-2f0c5d1e7a10", status="ACTIVE",
        sequence=7, observed_at=NOW, name="web-01", project_id="4f1c2b7e",
        details={"vm_state": "active", "task_state": None, "power_state": 1, "locked": False},
        source_updated_at=NOW - timedelta(seconds=3), revision=12,
    ),
    StatusRecord(
        site="east", kind="volume", id="0d3c5b7e-9f4f-1c2b-7e9d-8a4c6b8e2f1a", status="in-use",
        sequence=8, observed_at=NOW, details={"attachments": ["8c1f7c6e"], "size": 100},
    ),
]  # fmt: skip


def test_records_in_registry_framing_decode_with_confluents_deserializer(
    schema_registry: str, kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    codec = codec_from_settings(
        KafkaSettings(bootstrap=kafka_bootstrap, schema_registry_url=schema_registry)
    )
    topic = unique_name("topic")
    create_topic(kafka_bootstrap, topic, partitions=1)
    assert publish(kafka_bootstrap, topic, RECORDS, codec) == len(RECORDS)

    reader = RawConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name("group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        reader.subscribe([topic])
        values: list[bytes] = []
        for _ in range(60):
            values += [v for m in reader.consume(10, 1.0) if m.error() is None and (v := m.value())]
            if len(values) == len(RECORDS):
                break
    finally:
        reader.close()
    assert len(values) == len(RECORDS)

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": schema_registry}))
    context = SerializationContext(topic, MessageField.VALUE)
    ids = set()
    for record, value in zip(RECORDS, values, strict=True):
        assert value[0] == 0, "not the Confluent framing (magic byte 0)"
        ids.add(int.from_bytes(value[1:5], "big"))
        decoded = deserialize(value, context)
        assert decoded["site"] == record.site and decoded["id"] == record.id
        assert decoded["kind"] == record.kind and decoded["status"] == record.status
        assert decoded["sequence"] == record.sequence and decoded["name"] == record.name
        assert decoded["details"] == dict(record.details)
        assert decoded["observed_at"] == record.observed_at
        assert decoded["revision"] == record.revision
        assert codec.decode(value) == record

    (schema_id,) = ids
    with urlopen(f"{schema_registry}/subjects", timeout=10) as response:
        assert REGISTRY_SUBJECT in json.loads(response.read())
    with urlopen(f"{schema_registry}/schemas/ids/{schema_id}", timeout=10) as response:
        registered = json.loads(json.loads(response.read())["schema"])
    assert f"{registered['namespace']}.{registered['name']}" == "cascade.connector.StatusRecord"
