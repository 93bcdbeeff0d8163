"""The `tail` command: a site topic as JSON lines, one per Kafka record, decoded through the codec.

A line has key, partition, offset, the publishing poller's `instance` (from its header, when
there is one) and value (null for a tombstone, whose sequence header is shown as `sequence`).
A record that cannot be decoded becomes a line with `error` instead of `value`, and the tail
goes on: a bad record is what an operator most wants to see.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from connector.codecs import codec_from_settings
from connector.kafka import Message
from connector.kafka.reader import TopicReader
from connector.kafka.settings import KafkaSettings
from connector.kafka.topics import site_topic
from connector.records.codec import Codec
from connector.records.errors import DecodeError
from connector.records.messages import change_from_message, instance_of
from connector.records.model import Deletion


def tail_site(
    kafka: KafkaSettings,
    site: str,
    emit: Callable[[str], None],
    from_beginning: bool = False,
    limit: int | None = None,
    stop_at_end: bool = False,
) -> int:
    """Emit the site topic's records as JSON lines until `limit` lines (or, with `stop_at_end`,
    the end of every partition); returns the number of lines emitted."""
    if limit is not None and limit <= 0:
        return 0
    codec = codec_from_settings(kafka)
    reader = TopicReader(kafka, site_topic(kafka.topic_prefix, site), from_beginning)
    count = 0
    try:
        for message in reader.messages(stop_at_end=stop_at_end):
            emit(message_line(message, codec))
            count += 1
            if count == limit:
                break
    finally:
        reader.close()
    return count


def message_line(message: Message, codec: Codec) -> str:
    """One JSON line for a consumed message: its decoded value, or the reason it has none."""
    raw_key = message.key()
    key = raw_key.decode("utf-8", "backslashreplace") if isinstance(raw_key, bytes) else raw_key
    line: dict[str, Any] = {
        "key": key,
        "partition": message.partition(),
        "offset": message.offset(),
    }
    instance = instance_of(message)
    if instance is not None:
        line["instance"] = instance
    try:
        change = change_from_message(message, codec)
    except DecodeError as exc:
        line["error"] = exc.reason
    else:
        if isinstance(change, Deletion):
            line["value"] = None
            line["sequence"] = change.sequence
        else:
            line["value"] = dataclasses.asdict(change)
    return json.dumps(line, default=_json_default, ensure_ascii=False)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot render {type(value).__name__} as JSON")
