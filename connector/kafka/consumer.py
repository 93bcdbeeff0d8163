"""The group consumer the top side reads through.

Owns librdkafka's consumer: manual commits only (auto commit and auto offset store off),
cooperative-sticky assignment, a bounded prefetch so that a backlog waits in Kafka rather than in
memory, a short metadata refresh so a regex subscription sees a new site's topic within seconds,
and synchronous commits whose every partition error is raised.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from connector.errors import KafkaError
from connector.kafka.client import log_client_error, new_client
from connector.kafka.errors import not_authorized
from connector.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], None]

CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    # A regex subscription only sees topics that exist in its metadata: refresh it often.
    "topic.metadata.refresh.interval.ms": 5000,
    # Keep librdkafka's prefetch small: the backlog belongs in Kafka, not in this process.
    "queued.max.messages.kbytes": 4096,
    "queued.min.messages": 2000,
    # When that small queue is full, look again soon rather than after librdkafka's default 1 s.
    "fetch.queue.backoff.ms": 50,
    # A broker outage longer than the session makes this member's session lapse; it rejoins as
    # a new member, and the group waits for the old one to time out before it assigns anything.
    # librdkafka's 45 s made recovery after an outage take 40-50 s; 10 s bounds that wait
    # (heartbeats come from librdkafka's own thread, so a long apply does not end the session:
    # max.poll.interval.ms governs that).
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 2_000,
}


class Consumer:
    """A subscribed group member; rebalance events reach the callbacks given to `subscribe`."""

    def __init__(self, settings: KafkaSettings, group: str, **overrides: Any) -> None:
        config = {**CONSUMER_DEFAULTS, **settings.client_config(**overrides)}
        config["group.id"] = group
        config.setdefault("error_cb", log_client_error)
        self._settings = settings
        self._group = group
        self._consumer = new_client(confluent_kafka.Consumer, config)

    def subscribe(
        self,
        pattern: str,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        """Subscribe to every topic matching `pattern` (a regex starting with ^)."""
        self._consumer.subscribe(
            [pattern],
            on_assign=lambda _c, parts: on_assign(parts),
            on_revoke=lambda _c, parts: on_revoke(parts),
            on_lost=lambda _c, parts: on_lost(parts),
        )

    def consume(self, max_messages: int, timeout: float) -> list[confluent_kafka.Message]:
        """Up to `max_messages` messages; also serves rebalance callbacks. Raises fatal errors."""
        messages = self._consumer.consume(num_messages=max(1, max_messages), timeout=timeout)
        out = []
        for msg in messages:
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.fatal():
                raise KafkaError(f"fatal consumer error: {err}")
            elif refused := not_authorized(self._settings, self._action(msg), err):
                raise refused
            else:
                log.warning("consumer error on %s[%s]: %s", msg.topic(), msg.partition(), err)
        return out

    def _action(self, msg: confluent_kafka.Message) -> str:
        topic = msg.topic()
        return f"read topic {topic}" if topic else f"read with consumer group {self._group}"

    def commit(self, offsets: Sequence[TopicPartition]) -> None:
        """Commit exactly `offsets` (next offsets to read), synchronously; raise on any error."""
        try:
            result = self._consumer.commit(offsets=list(offsets), asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(f"commit failed: {exc.args[0]}") from exc
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            detail = ", ".join(
                f"{tp.topic}[{tp.partition}]@{tp.offset}: {tp.error}" for tp in failed
            )
            raise KafkaError(f"commit failed for {detail}")

    def committed(
        self, partitions: Sequence[TopicPartition], timeout: float = 30.0
    ) -> list[TopicPartition]:
        """The group's committed offsets of `partitions` (assigned to this member or not)."""
        return list(
            _call(
                "read committed offsets",
                self._consumer.committed,
                list(partitions),
                timeout=timeout,
            )
        )

    def watermarks(self, topic: str, partition: int, cached: bool = False) -> tuple[int, int]:
        """(low, high) offsets of a partition: asked of the broker, or (`cached`) as last
        fetched (-1001 when unknown)."""
        low, high = _call(
            f"read the offsets of {topic}[{partition}]",
            self._consumer.get_watermark_offsets,
            TopicPartition(topic, partition),
            timeout=10.0,
            cached=cached,
        )
        return int(low), int(high)

    def partitions_matching(self, pattern: str) -> list[TopicPartition]:
        """Every partition of every topic whose name matches `pattern` (a regex)."""
        metadata = _call("list topics", self._consumer.list_topics, timeout=10.0)
        regex = re.compile(pattern)
        return [
            TopicPartition(name, p)
            for name, topic in metadata.topics.items()
            if regex.match(name) and topic.error is None
            for p in topic.partitions
        ]

    def assignment(self) -> list[TopicPartition]:
        return list(self._consumer.assignment())

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            _call("pause partitions", self._consumer.pause, list(partitions))

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            _call("resume partitions", self._consumer.resume, list(partitions))

    def seek(self, partition: TopicPartition) -> None:
        """Read `partition` from its offset on; raises rather than skip silently."""
        _call(f"seek {partition.topic}[{partition.partition}]", self._consumer.seek, partition)

    def close(self) -> None:
        """Leave the group (revoking our partitions through the callbacks) and close."""
        self._consumer.close()


def _call(what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return method(*args, **kwargs)
    except confluent_kafka.KafkaException as exc:
        raise KafkaError(f"cannot {what}: {exc.args[0]}") from exc
