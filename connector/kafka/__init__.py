"""Thin wrappers that own confluent-kafka: topics (admin), producer, consumer, whole-topic reader.

Code outside this package never imports confluent_kafka nor configures librdkafka itself; the
few librdkafka types it handles (a message, a partition with its offset, a client error) are
re-exported here under the names below.
"""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, TopicPartition
from confluent_kafka import KafkaError as ClientError

__all__ = ["OFFSET_BEGINNING", "ClientError", "KafkaException", "Message", "TopicPartition"]
