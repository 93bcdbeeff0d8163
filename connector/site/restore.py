"""Rebuilding the publisher's state from the site's own compacted topic on start.

Reads every partition from its beginning to the end it had when the read began (no consumer
group, nothing committed), decodes each message, and keeps per key the fingerprint of its last
record; a tombstone removes the key. The highest sequence seen, in records, heartbeats and
tombstone headers, becomes the publisher's starting point. Messages that do not decode are
skipped and counted: the resync that follows republishes whatever they held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
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

#: Seconds to wait for topic metadata and watermarks.
METADATA_TIMEOUT = 30.0


@dataclass
class Restored:
    """What the topic said: per kind, id -> fingerprint; the highest sequence; counts."""

    fingerprints: dict[str, dict[str, int]] = field(default_factory=dict)
    last_sequence: int = 0
    messages: int = 0
    undecodable: int = 0


def restore_from_topic(
    kafka: KafkaSettings, topic: str, codec: Codec, kinds: Iterable[str]
) -> Restored:
    """Read `topic` from its beginning to its end and rebuild the state of `kinds`."""
    wanted = set(kinds)
    out = Restored(fingerprints={kind: {} for kind in wanted})
    for msg in read_to_end(kafka, topic):
        _apply(out, msg, codec, wanted)
    if out.undecodable:
        log.warning(
            "%d message(s) in %s did not decode; the resync resends them", out.undecodable, topic
        )
    return out


def read_to_end(
    kafka: KafkaSettings, topic: str, timeout: float = 300.0
) -> Iterator[confluent_kafka.Message]:
    """Every message of `topic` up to the high watermarks it had when the read began, in
    per-partition order; KafkaError after `timeout` seconds or on a broker error.

    Bounded by watermarks, not only by end-of-partition events: librdkafka reports an end only
    after a fetch comes back empty, which never happens while something keeps writing (a
    poller's heartbeats) faster than the fetch wait. An end event still counts, for a
    partition whose last offsets compaction removed.
    """
    consumer = confluent_kafka.Consumer(
        kafka.client_config(
            **{
                # librdkafka wants a group id even for assign(); nothing is ever committed.
                "group.id": "cascade-site-restore",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # Also stop at an end event: compaction may have removed the last offsets.
                "enable.partition.eof": True,
            }
        )
    )
    try:
        ends = _high_watermarks(consumer, topic)
        remaining = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign(
            [TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in remaining]
        )
        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                raise KafkaError(f"reading {topic} to its end took longer than {timeout:.0f}s")
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                err = msg.error()
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if err is not None and err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    remaining.discard(partition)
                    continue
                if err is not None:
                    raise KafkaError(f"reading {topic} [{partition}]: {err}")
                if partition not in remaining:
                    continue
                if offset < ends[partition][1]:
                    yield msg
                if offset >= ends[partition][1] - 1:
                    remaining.discard(partition)
    except confluent_kafka.KafkaException as exc:
        raise KafkaError(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


def _high_watermarks(consumer: confluent_kafka.Consumer, topic: str) -> dict[int, tuple[int, int]]:
    metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise KafkaError(f"cannot read {topic}: {'not found' if found is None else found.error}")
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=METADATA_TIMEOUT)
        for p in found.partitions
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
