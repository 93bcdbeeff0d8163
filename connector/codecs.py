"""The codec every command uses, from the app's settings: the records layer's Codec, framed
through the kafka layer's schema-registry client when `kafka.schema_registry_url` is set.

It lives here, above both layers, because neither `records/` nor `kafka/` may import the other.
"""

from __future__ import annotations

from connector.kafka.registry import SchemaRegistry
from connector.kafka.settings import KafkaSettings
from connector.records.codec import Codec, RegistryFraming


def codec_from_settings(kafka: KafkaSettings) -> Codec:
    """Single-object encoding, or registry framing when `kafka.schema_registry_url` is set."""
    if kafka.schema_registry_url:
        return Codec(RegistryFraming(SchemaRegistry(kafka.schema_registry_url)))
    return Codec()
