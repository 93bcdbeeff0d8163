"""Rebuilding the publisher's state from the site's own compacted topic on start.

Reads every partition from its beginning to the end it had when the read began (at once, or
again and again while a standby poller follows the topic), through the shared whole-topic
reader (`connector.kafka.reader`: no consumer group, nothing committed), decodes each message,
and keeps per key the fingerprint of its last record; a tombstone removes the key. The highest
sequence seen, in records, heartbeats and tombstone headers, becomes the publisher's starting
point. Messages that do not decode are skipped and counted: the resync that follows republishes
whatever they held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from connector.config import KafkaSettings
from connector.errors import ConnectorError
from connector.kafka import Message
from connector.kafka.reader import TopicReader
from connector.records.codec import Codec
from connector.records.errors import DecodeError
from connector.records.fingerprint import record_fingerprint
from connector.records.messages import change_from_message
from connector.records.model import Deletion

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
    follower = TopicFollower(kafka, topic, codec, kinds)
    try:
        follower.catch_up()
    finally:
        follower.close()
    return follower.restored


class TopicFollower:
    """The state a restore would rebuild, kept up to date: a standby poller follows its site
    topic (on a thread of its own, `follow`) so that a take-over reads only what is new."""

    def __init__(self, kafka: KafkaSettings, topic: str, codec: Codec, kinds: Iterable[str]):
        self.topic = topic
        self._codec = codec
        self._wanted = set(kinds)
        self.restored = Restored(fingerprints={kind: {} for kind in self._wanted})
        self._reader = TopicReader(kafka, topic, from_beginning=True)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        #: monotonic time a message was last read (the follower's start until the first one)
        self.last_message_at = time.monotonic()
        #: monotonic time a read last reached the topic's end (the broker answered), or None
        self.reached_end_at: float | None = None

    def __repr__(self) -> str:
        return f"TopicFollower({self.topic}, {self.restored.messages} message(s) read)"

    def catch_up(self, halt: threading.Event | None = None) -> bool:
        """Read on into `restored` up to the end the topic has now: True once there, False when
        `halt` (or `stop_following`) ended the read first, within about a second even with the
        broker down. KafkaError when it takes longer than RESTORE_TIMEOUT. Not while `follow`
        runs."""
        undecodable = self.restored.undecodable
        halt = halt or self._halt
        messages = self._reader.messages(stop_at_end=True, timeout=RESTORE_TIMEOUT, halt=halt)
        try:
            for msg in messages:
                _apply(self.restored, msg, self._codec, self._wanted)
                self.last_message_at = time.monotonic()
                if halt.is_set():
                    break
        finally:
            messages.close()  # a read left midway goes on from the next message next time
        if not halt.is_set():
            self.reached_end_at = time.monotonic()
        if self.restored.undecodable > undecodable:
            skipped = self.restored.undecodable - undecodable
            log.warning(
                "%d message(s) in %s did not decode; the resync resends them", skipped, self.topic
            )
        return not halt.is_set()

    def follow(self, interval: float) -> None:
        """Catch up now, then every `interval` seconds, on a thread, until `stop_following`."""

        def run() -> None:
            while not self._halt.is_set():
                try:
                    self.catch_up()
                except ConnectorError as exc:
                    # The take-over reads to the end anyway, and fails there if this persists.
                    log.warning("following %s: %s", self.topic, exc)
                self._halt.wait(interval)

        self._thread = threading.Thread(target=run, name="follow", daemon=True)
        self._thread.start()

    def stop_following(self) -> None:
        """Stop the thread of `follow` (within a message or a fetch) and wait for it."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._halt.clear()

    def close(self) -> None:
        self.stop_following()
        self._reader.close()


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
