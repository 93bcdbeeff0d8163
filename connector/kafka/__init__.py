"""Thin wrappers that own confluent-kafka: topics (admin), producer, consumer, whole-topic reader.

Code outside this package speaks in our records and never configures librdkafka itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import confluent_kafka

from connector.errors import ConfigError

Client = TypeVar("Client")


def new_client(factory: Callable[[dict[str, Any]], Client], config: dict[str, Any]) -> Client:
    """A librdkafka client; a setting librdkafka refuses becomes a ConfigError naming it."""
    try:
        return factory(config)
    except confluent_kafka.KafkaException as exc:
        raise ConfigError(f"kafka.librdkafka: {exc.args[0].str()}") from exc
