"""Rebuilding the publisher's state from the site's own compacted topic on start.

Reads every partition from its beginning to the end it had when the read started (no consumer
group, nothing committed), decodes each message, and keeps per key the fingerprint of its last
record; a tombstone removes the key. The highest sequence seen, in records, heartbeats and
tombstone headers, becomes the publisher's starting point. Messages that do not decode are
skipped and counted: the resync that follows republishes whatever they held.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import confluent_kafka
from confluent_kafka import TopicPartition

from connector.config import KafkaSettings
from connector.errors import KafkaError
from connector.records.codec import Codec
from connector.records.errors import DecodeError
from connector.records.messages import change_from_message
from connector.records.model import Deletion
from connector.site.publisher import record_fingerprint

log = logging.getLogger(__name__)

#: Seconds to wait for metadata and watermarks.
METADATA_TIMEOUT = 30.0


@dataclass
class Restored:
    """What the topic said: per kind, id -> fingerprint; the highest sequence; counts."""

    fingerprints: dict[str, dict[str, int]] = field(default_factory=dict)
    last_sequence: int = 0
    messages: int = 0
    undecodable: int = 0


def restore_from_topic(
    kafka: KafkaSettings, topic: str, codec: Codec, kinds: Iterable[str], timeout: float = 300.0
) -> Restored:
    """Read `topic` to its end and rebuild the state of `kinds`; KafkaError if it takes longer
    than `timeout` seconds or the broker fails."""
    wanted = set(kinds)
    out = Restored(fingerprints={kind: {} for kind in wanted})
    consumer = confluent_kafka.Consumer(
        kafka.client_config(
            **{
                # librdkafka wants a group id even for assign(); nothing is ever committed.
                "group.id": f"cascade-restore-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
    )
    try:
        ends = _ends(consumer, topic)
        remaining = {p for p, (low, high) in ends.items() if high > low}
        if not remaining:
            return out
        consumer.assign(
            [TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in remaining]
        )
        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                raise KafkaError(f"restoring from {topic} took longer than {timeout:.0f}s")
            for msg in consumer.consume(num_messages=5000, timeout=1.0):
                partition = msg.partition() or 0
                err = msg.error()
                if err is not None:
                    if err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        remaining.discard(partition)
                        continue
                    raise KafkaError(f"reading {topic} [{partition}] to restore: {err}")
                _apply(out, msg, codec, wanted)
                if (msg.offset() or 0) >= ends[partition][1] - 1:
                    remaining.discard(partition)
    except confluent_kafka.KafkaException as exc:
        raise KafkaError(f"reading {topic} to restore: {exc}") from exc
    finally:
        consumer.close()
    if out.undecodable:
        log.warning(
            "%d message(s) in %s did not decode; the resync resends them", out.undecodable, topic
        )
    return out


def _ends(consumer: confluent_kafka.Consumer, topic: str) -> dict[int, tuple[int, int]]:
    metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        why = "missing" if described is None else described.error
        raise KafkaError(f"cannot restore from {topic}: {why}")
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=METADATA_TIMEOUT)
        for p in described.partitions
    }


def _apply(out: Restored, msg: confluent_kafka.Message, codec: Codec, wanted: set[str]) -> None:
    out.messages += 1
    try:
        change = change_from_message(msg, codec)
    except DecodeError as exc:
        out.undecodable += 1
        log.debug("skipping undecodable message at offset %s: %s", msg.offset(), exc)
        return
    if change.sequence is not None:
        out.last_sequence = max(out.last_sequence, change.sequence)
    if change.kind not in wanted:
        return
    if isinstance(change, Deletion):
        out.fingerprints[change.kind].pop(change.id, None)
    else:
        out.fingerprints[change.kind][change.id] = record_fingerprint(change)
