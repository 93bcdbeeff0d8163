"""Test helpers for the real broker: create a topic, publish changes, read committed offsets, a
consumed message's position and headers, keep a topic growing; how long a broker of the tests'
own may take to start."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Message as RawMessage
from confluent_kafka import Producer as RawProducer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from connector.records.codec import Codec
from connector.records.messages import to_message
from connector.records.model import Change

#: Seconds a broker may take to start: a minute and more on a loaded two-core machine.
BROKER_START = 180.0


def position(msg: RawMessage) -> tuple[int, int]:
    """(partition, offset) of a consumed message (librdkafka types both as optional)."""
    partition, offset = msg.partition(), msg.offset()
    assert partition is not None and offset is not None, f"{msg!r} has no position"
    return partition, offset


def header_map(msg: RawMessage) -> dict[str, bytes]:
    """The headers of a consumed message by name (librdkafka gives a list of pairs, or None)."""
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    out: dict[str, bytes] = {}
    for name, value in pairs:
        assert isinstance(value, bytes), f"header {name!r} is {value!r}, not bytes"
        out[name] = value
    return out


def create_topic(bootstrap: str, topic: str, partitions: int = 3, compact: bool = True) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"cleanup.policy": "compact"} if compact else {}
    admin.create_topics([NewTopic(topic, partitions, 1, config=config)])[topic].result(timeout=30)


def publish(
    bootstrap: str,
    topic: str,
    changes: Iterable[Change],
    codec: Codec | None = None,
    raw: Iterable[tuple[bytes | None, bytes | None]] = (),
    transactional_id: str | None = None,
) -> int:
    """Produce `changes` (encoded with `codec`) then `raw` (key, value) pairs; return the count.
    With `transactional_id`, all of it in one transaction, as an active poller publishes (its
    commit marker takes an offset after the last record of each partition it wrote)."""
    codec = codec or Codec()
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "linger.ms": 20,
        "compression.type": "zstd",
    }
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    producer = RawProducer(config)
    if transactional_id is not None:
        producer.init_transactions(30)
        producer.begin_transaction()
    errors: list[object] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    count = 0
    for change in changes:
        msg = to_message(change, codec)
        while True:
            try:
                producer.produce(
                    topic,
                    key=msg.key,
                    value=msg.value,
                    headers=list(msg.headers),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    for key, value in raw:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        count += 1
    if transactional_id is not None:
        producer.commit_transaction(30)
    assert producer.flush(60) == 0
    assert not errors, errors
    return count


def end_offsets(bootstrap: str, topic: str, committed: bool = True) -> dict[int, int]:
    """Per partition, where a committed reader's view ends (the last stable offset: records of
    a transaction not yet completed lie past it), or with `committed=False` the high mark."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    isolation = "read_committed" if committed else "read_uncommitted"
    probe = RawConsumer(
        {"bootstrap.servers": bootstrap, "group.id": "offset-probe", "isolation.level": isolation}
    )
    try:
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        probe.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    probe = RawConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        probe.close()


class Writer:
    """Keeps writing `message` to partition 0 of `topic`, each one flushed, until stopped: a live
    site topic, written far more often than librdkafka's fetch wait."""

    def __init__(self, bootstrap: str, topic: str, key: bytes, value: bytes | None) -> None:
        self.written = 0
        self.started = threading.Event()
        self._stop = threading.Event()
        self._args = (bootstrap, topic, key, value)
        self._thread = threading.Thread(target=self._write, name="writer", daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        assert self.started.wait(30), "the writer did not start"
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _write(self) -> None:
        bootstrap, topic, key, value = self._args
        producer = RawProducer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        while not self._stop.is_set():
            producer.produce(topic, value, key, partition=0)
            assert producer.flush(10) == 0
            self.written += 1
            if self.written >= 5:
                self.started.set()
