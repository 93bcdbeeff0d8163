"""Kafka messages <-> Changes: key, value and the sequence header together.

The codec sees only value bytes; here the key is checked against the value (a record whose
site/kind/id disagree with its key is as bad as corrupt bytes) and, for the consumer, against
the site its topic speaks for; a tombstone becomes a Deletion carrying the sequence from its
header. The consumer, tail and the poller's restore
all read messages through `change_from_message`; the publisher writes through `to_message`.
This layer never imports librdkafka: a consumed message is anything with key/value/headers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from connector.records.codec import Codec
from connector.records.errors import DecodeError, RegistryError, WrongSiteError
from connector.records.model import (
    HEARTBEAT_KIND,
    INSTANCE_HEADER,
    SEQUENCE_HEADER,
    Change,
    Deletion,
    StatusRecord,
    parse_key,
)


class ReadMessage(Protocol):
    """What is read of a consumed Kafka message (librdkafka's Message has these methods)."""

    def key(self) -> str | bytes | None: ...

    def value(self) -> str | bytes | None: ...

    def headers(
        self,
    ) -> Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None: ...


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """What to produce for a Change: key, value (None for a tombstone) and headers."""

    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]


def to_message(change: Change, codec: Codec, checked: bool = False) -> KafkaMessage:
    """The Kafka message for `change`: an encoded record, or a tombstone with its sequence.
    `checked`: see `Codec.encode`."""
    key = change.key.encode("utf-8")
    if isinstance(change, StatusRecord):
        return KafkaMessage(key, codec.encode(change, checked), [])
    headers = [] if change.sequence is None else [sequence_header(change.sequence)]
    return KafkaMessage(key, None, headers)


def sequence_header(sequence: int) -> tuple[str, bytes]:
    """The SEQUENCE_HEADER header of a tombstone: the sequence in decimal ASCII."""
    return SEQUENCE_HEADER, str(sequence).encode("ascii")


def change_from_message(message: ReadMessage, codec: Codec, site: str | None = None) -> Change:
    """The Change a consumed message carries. `message` must not be an error event.

    With `site` (the site its topic speaks for), a message about any other site, by its key
    (value and tombstone alike) or as a heartbeat naming another site, is a WrongSiteError: one
    site's topic can never change another site's rows. Whatever else goes wrong turning the
    message into a change (its key, value or headers) is a DecodeError naming the reason, so no
    message, however malformed, ends its reader; RegistryError (the registry did not answer,
    the bytes may be fine) passes through."""
    try:
        return _change(message, codec, site)
    except (DecodeError, RegistryError):
        raise
    except Exception as exc:
        # A malformed message can trip any library on the way (headers of an unexpected type,
        # a codec's own exception): it is as bad as corrupt bytes, never a reason to stop.
        raise DecodeError(f"unreadable message: {type(exc).__name__}: {exc}") from exc


def _change(message: ReadMessage, codec: Codec, site: str | None) -> Change:
    raw_key = message.key()
    if raw_key is None:
        raise DecodeError("message has no key")
    try:
        key = raw_key.decode("utf-8") if isinstance(raw_key, bytes) else str(raw_key)
        key_site, kind, object_id = parse_key(key)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"bad key {raw_key!r}: {exc}") from exc
    if site is not None:
        _check_site(key, key_site, kind, object_id, site)
    value = message.value()
    if value is None:
        return Deletion(key_site, kind, object_id, _sequence(message))
    record = codec.decode(value if isinstance(value, bytes) else value.encode())
    if record.id != object_id or record.kind != kind or record.site != key_site:
        raise DecodeError(f"key {key!r} disagrees with the value's site/kind/id {record.key!r}")
    return record


def _check_site(key: str, key_site: str, kind: str, object_id: str, site: str) -> None:
    """WrongSiteError unless key `key` is about `site` (a heartbeat's id is its site, too). The
    value is checked against the key after this, so its site and id are covered as well."""
    if key_site != site:
        raise WrongSiteError(f"key {key!r} is about site {key_site!r}, not this topic's {site!r}")
    if kind == HEARTBEAT_KIND and object_id != site:
        raise WrongSiteError(
            f"heartbeat key {key!r} names site {object_id!r}, not this topic's {site!r}"
        )


def instance_of(message: ReadMessage) -> str | None:
    """The INSTANCE_HEADER of a message: which poller published it (None: not said)."""
    raw = _header(message, INSTANCE_HEADER)
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw


def _header(message: ReadMessage, wanted: str) -> str | bytes | None:
    raw: str | bytes | None = None
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == wanted:
            raw = value  # the last one wins, as with any repeated Kafka header
    return raw


def _sequence(message: ReadMessage) -> int | None:
    raw = _header(message, SEQUENCE_HEADER)
    if raw is None:
        return None
    text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else raw
    if not text.isascii() or not text.isdigit():
        raise DecodeError(f"header {SEQUENCE_HEADER} = {raw!r} is not a decimal sequence number")
    return int(text)
