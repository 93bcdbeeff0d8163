"""Rebuilding the publisher's state from the site's own compacted topic on start.

Reads every partition from its beginning to the end it had when the read began, through the
shared whole-topic reader (`connector.kafka.reader`: no consumer group, nothing committed),
decodes each message, and keeps per key the fingerprint of its last record; a tombstone removes
the key. The highest sequence seen, in records, heartbeats and tombstone headers, becomes the
publisher's starting point. Messages that do not decode are skipped and counted: the resync that
follows republishes whatever they held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from connector.config import KafkaSettings
from connector.kafka import Message
from connector.kafka.reader import TopicReader
from connector.records.codec import Codec
from connector.records.errors import DecodeError
from connector.records.messages import change_from_message
from connector.records.model import Deletion
from connector.site.publisher import record_fingerprint

log = logging.getLogger(__name__)

#: Seconds the whole read may take before the start fails (KafkaError).
RESTORE_TIMEOUT = 300.0


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
    reader = TopicReader(kafka, topic, from_beginning=True)
    try:
        for msg in reader.messages(stop_at_end=True, timeout=RESTORE_TIMEOUT):
            _apply(out, msg, codec, wanted)
    finally:
        reader.close()
    if out.undecodable:
        log.warning(
            "%d message(s) in %s did not decode; the resync resends them", out.undecodable, topic
        )
    return out


def _apply(out: Restored, msg: Message, codec: Codec, wanted: set[str]) -> None:
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
