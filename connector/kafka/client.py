"""What every librdkafka client of ours shares: how it is made, and how its errors are logged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import confluent_kafka

from connector.errors import ConfigError

log = logging.getLogger(__name__)

Client = TypeVar("Client")

#: Every reader of site topics reads committed records only, whatever `-X` says: the site's
#: pollers publish in transactions, and a fenced poller's unfinished transaction is aborted.
#: (librdkafka's default already, pinned so that no passthrough setting turns fencing off.)
READ_COMMITTED = {"isolation.level": "read_committed"}


def new_client(factory: Callable[[dict[str, Any]], Client], config: dict[str, Any]) -> Client:
    """A librdkafka client; a setting librdkafka refuses becomes a ConfigError naming it."""
    try:
        return factory(config)
    except confluent_kafka.KafkaException as exc:
        raise ConfigError(f"kafka.librdkafka: {exc.args[0].str()}") from exc


def log_client_error(err: confluent_kafka.KafkaError) -> None:
    """librdkafka's `error_cb`: client-level errors (broker down, auth) are mostly transient and
    retried by librdkafka; a fatal one means the client cannot go on."""
    if err.fatal():
        log.error("fatal Kafka client error: %s", err)
    else:
        log.warning("Kafka client error: %s", err)
