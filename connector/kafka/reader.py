"""A reader of one whole topic, outside any consumer group: for `tail`, and for anything that must
read a site topic from the beginning to its end (the poller's restore).

It assigns every partition itself (no group, no rebalance) and never commits. With `stop_at_end`
it reads each partition up to the high watermark it had when the read started, then stops: a
topic that keeps receiving writes (a running poller's heartbeats) still has an end. End events
alone would not do: librdkafka reports one only after a fetch comes back empty, which never
happens while something writes faster than its fetch wait. An end event still ends a partition
early, for one whose last offsets are not messages (compaction, transaction markers).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import confluent_kafka
from confluent_kafka import TopicPartition

from connector.errors import KafkaError
from connector.kafka.client import READ_COMMITTED, new_client
from connector.kafka.errors import not_authorized
from connector.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: librdkafka wants a group id even for assign(); nothing is ever committed under it, but
#: librdkafka still looks up its coordinator, which takes DESCRIBE on the group.
READER_GROUP = "cascade-connector-reader"

READER_DEFAULTS: dict[str, Any] = {
    "group.id": READER_GROUP,
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
}

#: Seconds to wait for topic metadata and watermarks, retrying what the broker says is passing
#: (a topic created a moment ago may not have a leader yet), in attempts of at most
#: ATTEMPT_TIMEOUT so that a halted read ends within about that long even with the broker down.
METADATA_TIMEOUT = 30.0
ATTEMPT_TIMEOUT = 2.0
#: Messages asked of librdkafka per call.
BATCH = 5000

#: What a broker answers about a topic created a moment ago, while leaders move, or while it is
#: out of reach for a moment.
_NOT_YET = {
    confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
    confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
    confluent_kafka.KafkaError._TIMED_OUT,
    confluent_kafka.KafkaError._TRANSPORT,
    confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
}


class TopicReader:
    """Reads every partition of `topic`, from the beginning or from the end."""

    def __init__(
        self, settings: KafkaSettings, topic: str, from_beginning: bool, **overrides: Any
    ) -> None:
        self.topic = topic
        self._settings = settings
        self._consumer = new_client(
            confluent_kafka.Consumer,
            {**READER_DEFAULTS, **settings.client_config(**{**READ_COMMITTED, **overrides})},
        )
        try:
            self._partitions = self._metadata_partitions()
            #: per partition, the offset of the next message to read, once known (from the end:
            #: the high watermark when the reader was made, so "the end" is exact)
            self._next: dict[int, int] = {}
            #: partitions paused at the end of a `stop_at_end` read
            self._paused: set[int] = set()
            if from_beginning:
                # By name, not by offset: retention may move the low watermark meanwhile.
                starts = dict.fromkeys(self._partitions, confluent_kafka.OFFSET_BEGINNING)
            else:
                self._next = {p: high for p, (_low, high) in self._watermarks().items()}
                starts = dict(self._next)
            self._consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        except BaseException:
            self._consumer.close()
            raise

    def __repr__(self) -> str:
        return f"TopicReader({self.topic!r}, next={self._next})"

    def messages(
        self,
        stop_at_end: bool = False,
        poll: float = 0.5,
        timeout: float | None = None,
        halt: threading.Event | None = None,
    ) -> Generator[confluent_kafka.Message, None, None]:
        """Yield confluent_kafka.Message objects in per-partition order. With `stop_at_end`, stop
        once every partition has been read up to the high watermark it had when this call
        started (later messages are not yielded); a caller may also stop early (close the
        generator, or set `halt`: seen within about a second, the broker up or not), and the
        next call goes on from the message after the last one yielded. KafkaError on a broker
        error, or when `timeout` seconds pass before the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        #: partition -> the offset to read up to (exclusive); empty when following for ever
        ends: dict[int, int] = {}
        self._unpause()
        if stop_at_end:
            try:
                ends = {p: high for p, (_low, high) in self._watermarks(halt).items()}
            except _Halted:
                return
            # A partition whose position is unknown and whose low mark is above 0 (retention)
            # ends with its end event, on the first fetch.
            for p in [p for p, end in ends.items() if self._next.get(p, 0) >= end]:
                self._done(ends, p)
        try:
            while (not stop_at_end or ends) and not (halt is not None and halt.is_set()):
                if deadline is not None and time.monotonic() > deadline:
                    raise KafkaError(
                        f"reading {self.topic} to its end took longer than {timeout:g}s"
                    )
                try:
                    batch = self._consumer.consume(num_messages=BATCH, timeout=poll)
                except confluent_kafka.KafkaException as exc:
                    raise KafkaError(f"reading {self.topic}: {exc}") from exc
                for msg in batch:
                    err = msg.error()
                    partition = msg.partition() or 0  # a message or an end event always has one
                    if err is None:
                        offset = msg.offset() or 0
                        if stop_at_end and partition not in ends:
                            continue  # fetched before the partition was paused at its end
                        if stop_at_end and offset >= ends[partition]:
                            # The messages up to the end were compacted away; later ones came in.
                            self._done(ends, partition)
                            continue
                        self._next[partition] = offset + 1
                        yield msg
                        if stop_at_end and offset + 1 >= ends[partition]:
                            self._done(ends, partition)
                    elif err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        if stop_at_end and partition not in ends:
                            # Fetched after the partition was paused, past messages dropped
                            # above: taking its offset would skip them in the next read.
                            continue
                        # The event's offset is where the partition ends now.
                        self._next[partition] = max(self._next.get(partition, 0), msg.offset() or 0)
                        if stop_at_end:
                            self._done(ends, partition)
                    elif refused := not_authorized(self._settings, self._action(err), err):
                        raise refused
                    elif (
                        err.fatal()
                        or err.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART
                    ):
                        raise KafkaError(f"reading {self.topic}: {err.str()}")
                    else:
                        log.warning("reading %s[%s]: %s", self.topic, msg.partition(), err.str())
        finally:
            # Left early (the caller stopped reading, or an error): what was fetched beyond the
            # last message yielded is dropped with the batch, so the next read of these
            # partitions starts again right after that message (see _unpause).
            for partition in list(ends):
                self._done(ends, partition)

    def close(self) -> None:
        self._consumer.close()

    def _action(self, err: confluent_kafka.KafkaError) -> str:
        if err.code() == confluent_kafka.KafkaError.GROUP_AUTHORIZATION_FAILED:
            return f"describe consumer group {READER_GROUP} (to read {self.topic})"
        return f"read topic {self.topic}"

    def _done(self, ends: dict[int, int], partition: int) -> None:
        """The partition is read to its end: stop fetching it."""
        del ends[partition]
        self._consumer.pause([TopicPartition(self.topic, partition)])
        self._paused.add(partition)

    def _unpause(self) -> None:
        """Fetch the partitions an earlier read paused again, from the message after the last
        one it yielded (pausing drops what was fetched beyond it)."""
        if not self._paused:
            return
        parts = [
            TopicPartition(self.topic, p, self._next.get(p, confluent_kafka.OFFSET_BEGINNING))
            for p in sorted(self._paused)
        ]
        self._consumer.resume(parts)
        for part in parts:
            self._consumer.seek(part)
        self._paused.clear()

    def _metadata_partitions(self) -> list[int]:
        def partitions(timeout: float) -> list[int]:
            found = self._consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            if found is None:
                raise KafkaError(f"cannot read topic {self.topic}: not found")
            if found.error is not None:
                refused = not_authorized(self._settings, f"read topic {self.topic}", found.error)
                if refused:
                    raise refused
                raise confluent_kafka.KafkaException(found.error)
            return sorted(found.partitions)

        return _retrying(partitions, f"cannot read topic {self.topic}")

    def _watermarks(self, halt: threading.Event | None = None) -> dict[int, tuple[int, int]]:
        """partition -> (low, high), asked of the leaders (not cached); _Halted once `halt` is
        set."""

        def one(p: int, timeout: float) -> tuple[int, int]:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=timeout, cached=False
            )
            return int(low), int(high)

        return {
            p: _retrying(functools.partial(one, p), f"watermarks of {self.topic}[{p}]", halt)
            for p in self._partitions
        }


class _Halted(Exception):
    """The caller's `halt` was set while retrying: the read ends, nothing is wrong."""


def _retrying(call: Callable[[float], T], what: str, halt: threading.Event | None = None) -> T:
    """`call(timeout)`, again for up to METADATA_TIMEOUT while the broker says the error will
    pass, in attempts of at most ATTEMPT_TIMEOUT; _Halted once `halt` is set."""
    deadline = time.monotonic() + METADATA_TIMEOUT
    delay = 0.05
    while True:
        try:
            return call(max(0.1, min(ATTEMPT_TIMEOUT, deadline - time.monotonic())))
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0] if exc.args else None
            passing = isinstance(err, confluent_kafka.KafkaError) and err.code() in _NOT_YET
            if not passing or time.monotonic() + delay > deadline:
                reason = err.str() if isinstance(err, confluent_kafka.KafkaError) else str(exc)
                raise KafkaError(f"{what}: {reason}") from exc
            if halt is None:
                time.sleep(delay)
            elif halt.wait(delay):
                raise _Halted from exc
            delay = min(1.0, delay * 2)
