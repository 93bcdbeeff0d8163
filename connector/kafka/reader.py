"""A reader of one whole topic, outside any consumer group: for `tail`, and for anything that must
read a site topic from the beginning to its end.

It assigns every partition itself (no group, no rebalance) and never commits. With `stop_at_end`
it stops once every partition has reported its end, so "read what is there" terminates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from connector.config import KafkaSettings
from connector.errors import KafkaError
from connector.kafka import new_client

log = logging.getLogger(__name__)

READER_DEFAULTS: dict[str, Any] = {
    # librdkafka wants a group id even for assign(); nothing is ever committed under it.
    "group.id": "cascade-connector-reader",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
}


class TopicReader:
    """Reads every partition of `topic`, from the beginning or from the end."""

    def __init__(
        self, settings: KafkaSettings, topic: str, from_beginning: bool, **overrides: Any
    ) -> None:
        self.topic = topic
        self._consumer = new_client(
            confluent_kafka.Consumer, {**READER_DEFAULTS, **settings.client_config(**overrides)}
        )
        metadata = self._consumer.list_topics(topic, timeout=30.0)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            self._consumer.close()
            reason = found.error.str() if found is not None and found.error else "not found"
            raise KafkaError(f"cannot read topic {topic}: {reason}")
        start = confluent_kafka.OFFSET_BEGINNING if from_beginning else confluent_kafka.OFFSET_END
        self._partitions = sorted(found.partitions)
        self._consumer.assign([TopicPartition(topic, p, start) for p in self._partitions])

    def __repr__(self) -> str:
        return f"TopicReader({self.topic!r}, partitions={self._partitions})"

    def messages(
        self, stop_at_end: bool = False, poll: float = 0.5
    ) -> Iterator[confluent_kafka.Message]:
        """Yield confluent_kafka.Message objects in per-partition order; with `stop_at_end`, stop
        once every partition has been read to its end."""
        at_end: set[int] = set()
        while not (stop_at_end and len(at_end) == len(self._partitions)):
            msg = self._consumer.poll(poll)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                at_end.discard(msg.partition())
                yield msg
            elif err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                at_end.add(msg.partition() or 0)  # an end-of-partition event always has one
            elif err.fatal() or err.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaError(f"reading {self.topic}: {err.str()}")
            else:
                log.warning("reading %s[%s]: %s", self.topic, msg.partition(), err.str())

    def close(self) -> None:
        self._consumer.close()
