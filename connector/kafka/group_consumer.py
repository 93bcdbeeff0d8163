"""The group consumer the top side reads through.

Owns librdkafka's consumer: manual commits only (auto commit and auto offset store off),
cooperative-sticky assignment, a bounded prefetch so that a backlog waits in Kafka rather than in
memory, a short metadata refresh so a regex subscription sees a new site's topic within seconds,
and synchronous commits with a deadline whose every partition error is raised. The caller may
say where each partition assigned starts (its `on_assign` returns the offsets); else the group's
committed offsets do, as librdkafka reads them. It also owns pausing: partitions
held back on request (`hold`), and partitions rewound and paused for a while
(`trigger_backpressure`, as quix-streams names it), resumed by `consume` when their time is up.
Callers name partitions as (topic, partition) pairs and never see librdkafka's types.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import OFFSET_END, ConsumerGroupState, TopicPartition
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from connector.errors import KafkaError
from connector.kafka.client import READ_COMMITTED, close_within, log_client_error, new_client
from connector.kafka.errors import admin_result, not_authorized
from connector.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

#: A partition: (topic, partition number).
Partition = tuple[str, int]

PartitionsCallback = Callable[[list[Partition]], None]
#: Told the partitions assigned; returns where each starts (an offset, or OFFSET_BEGINNING), or
#: None to start them from the group's committed offsets.
AssignCallback = Callable[[list[Partition]], Mapping[Partition, int] | None]

#: Makes the librdkafka consumer from its configuration (tests make one that never joins).
ClientFactory = Callable[[dict[str, Any]], confluent_kafka.Consumer]

#: Seconds a commit waits for the group coordinator's answer. librdkafka's synchronous commit
#: has no deadline of its own and was seen to wait minutes with the member's session lapsed
#: (confluent-kafka-python issue 1801; docs/performance.md), holding the loop, its reads and a
#: SIGTERM. Past this the loop goes on and the commit counts as failed: it is retried with the
#: next one, once the one waiting has returned.
COMMIT_TIMEOUT = 15.0
#: Seconds a question to the broker may wait by default (committed offsets, watermarks, offsets
#: by time, configs, metadata): the loop waits for each, and a stop with it.
QUERY_TIMEOUT = 5.0
#: Seconds `close` waits for librdkafka's close (leaving the group, which waits for the
#: coordinator and any commit still unanswered, with no deadline of its own) before leaving it
#: to finish on its own thread: with the broker frozen it waited for the LeaveGroup request's
#: socket timeout, and a stop must end within 10 s.
CLOSE_TIMEOUT = 3.0
#: How often a commit waiting for its answer looks whether a stop interrupted it.
_INTERRUPT_CHECK = 0.1

CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    # A regex subscription only sees topics that exist in its metadata: refresh it often.
    "topic.metadata.refresh.interval.ms": 5000,
    # Keep librdkafka's prefetch small: the backlog belongs in Kafka, not in this process. It is
    # also one queue for every partition, read in the order fetched: a quiet site's record
    # waits behind whatever storming sites' records were fetched before it, so each partition
    # may hold only a little of it: fetched again once fewer than 100 of its records wait, at
    # most 64 KB of it per fetch (docs/performance.md).
    "queued.max.messages.kbytes": 1024,
    "queued.min.messages": 100,
    "max.partition.fetch.bytes": 65_536,
    # When that small queue is full, look again soon rather than after librdkafka's default 1 s.
    "fetch.queue.backoff.ms": 50,
    # A fetch with nothing new to read waits this long at the broker, and a request for the
    # last stable offset sent on the same connection waits behind it (a broker answers one
    # connection's requests in order): at librdkafka's 500 ms, a window due to close waited up
    # to half a second to learn whether more was there. Idle, this costs a fetch request every
    # 0.1 s per broker.
    "fetch.wait.max.ms": 100,
    # A broker outage longer than the session makes this member's session lapse; it rejoins as
    # a new member, and the group waits for the old one to time out before it assigns anything.
    # librdkafka's 45 s made recovery after an outage take 40-50 s; 10 s bounds that wait
    # (heartbeats come from librdkafka's own thread, so a long apply does not end the session:
    # max.poll.interval.ms governs that).
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 2_000,
    # A synchronous commit waits for the broker's answer as long as a request may take, and
    # the loop (and so a SIGTERM) waits with it: a broker that stops answering without
    # closing the connection (frozen, a partition in the network) held a commit, and the
    # consumer's exit, for over 30 s with librdkafka's 60 s default. A commit that times out
    # is retried with the next one; fetches wait fetch.wait.max.ms (0.1 s) on top of this.
    "socket.timeout.ms": 5_000,
}


#: Seconds `unserved` may take in all: the loop waits for it, and so does a stop.
UNSERVED_TIMEOUT = 5.0
#: Group states in which the coordinator is assigning the partitions (members hold none yet).
REBALANCING = frozenset(
    {ConsumerGroupState.PREPARING_REBALANCING, ConsumerGroupState.COMPLETING_REBALANCING}
)


class Consumer:
    """A subscribed group member; rebalance events reach the callbacks given to `subscribe`."""

    def __init__(
        self,
        settings: KafkaSettings,
        group: str,
        *,
        make_client: ClientFactory | None = None,
        commit_timeout: float = COMMIT_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        **overrides: Any,
    ) -> None:
        config = {**CONSUMER_DEFAULTS, **settings.client_config(**{**READ_COMMITTED, **overrides})}
        config["group.id"] = group
        config.setdefault("error_cb", log_client_error)
        self._settings = settings
        self._group = group
        self._config = config
        self._make_client = make_client or confluent_kafka.Consumer
        #: an incremental (cooperative) rebalance adds partitions; an eager one replaces them all
        self._cooperative = "cooperative" in str(config["partition.assignment.strategy"])
        self._consumer = new_client(self._make_client, dict(config))
        #: what `subscribe` was given, for `rejoin`
        self._subscription: tuple[Any, ...] | None = None
        #: the caller's `on_lost`, for what a client replaced by `rejoin` held
        self._on_lost: PartitionsCallback | None = None
        #: partitions held back by the caller (`hold`), until it releases them
        self._held: set[Partition] = set()
        #: partitions rewound and paused by `trigger_backpressure`, with when to resume them
        self._backoff: dict[Partition, float] = {}
        self._paused: set[Partition] = set()
        self._commit_timeout = commit_timeout
        self._close_timeout = close_timeout
        #: a commit that had no answer within its deadline, while it still waits for one
        self._unanswered: _Commit | None = None
        #: set by `interrupt` (a stop): commits stop waiting for their answers
        self._interrupted = threading.Event()

    def subscribe(
        self,
        pattern: str,
        on_assign: AssignCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        """Subscribe to every topic matching `pattern` (a regex starting with ^)."""

        def assigned(consumer: confluent_kafka.Consumer, parts: list[TopicPartition]) -> None:
            if consumer is not self._consumer:
                return  # a client `rejoin` replaced, closing on its own thread
            starts = on_assign(_pairs(parts))
            if starts is None:
                return  # confluent-kafka assigns them, from the committed offsets
            placed = [
                TopicPartition(tp.topic, tp.partition, starts[(tp.topic, tp.partition)])
                for tp in parts
            ]
            # Assigned from the callback, they are not assigned again by confluent-kafka.
            if self._cooperative:
                consumer.incremental_assign(placed)
            else:
                consumer.assign(placed)

        def gone(callback: PartitionsCallback) -> Callable[[object, list[TopicPartition]], None]:
            def forget(consumer: object, parts: list[TopicPartition]) -> None:
                if consumer is not self._consumer:
                    return  # a client `rejoin` replaced: what it held was reported lost then
                pairs = _pairs(parts)
                for tp in pairs:
                    self._held.discard(tp)
                    self._backoff.pop(tp, None)
                    self._paused.discard(tp)
                callback(pairs)

            return forget

        self._subscription = ([pattern], assigned, gone(on_revoke), gone(on_lost))
        self._on_lost = on_lost
        self._subscribe()

    def _subscribe(self) -> None:
        assert self._subscription is not None
        topics, on_assign, on_revoke, on_lost = self._subscription
        self._consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)

    def rejoin(self) -> None:
        """Leave the group, close this client and join again, subscribed as before, with a new
        one: for a client that holds no partition while others go unread (librdkafka has had
        bugs of that kind). What belonged to the old client goes with it: its pauses and
        rewinds, and a commit of its still waiting for an answer (which would refuse the new
        client's commits); partitions it held, if any, are reported lost at once. Its close
        is waited for within the close timeout, then left to finish on its own thread; its late
        callbacks are ignored."""
        old, held = self._consumer, self.assignment()
        self._consumer = new_client(self._make_client, dict(self._config))
        self._paused = set()
        self._backoff = {}
        self._unanswered = None
        if held and self._on_lost is not None:
            self._held.difference_update(held)
            self._on_lost(held)
        close_within(old.close, self._close_timeout, "close the consumer replaced by a rejoin")
        self._subscribe()

    def unserved(self, pattern: str, timeout: float = UNSERVED_TIMEOUT) -> list[Partition]:
        """The partitions of the topics matching `pattern` that no other member of the group
        is assigned, as the broker tells: unread ones, or ones the broker gives this member
        when it holds them not; none while the group rebalances (it is assigning them).
        KafkaError when Kafka does not answer within `timeout` seconds in all (the loop waits:
        a broker outage must not hold a stop longer)."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        partitions = self.partitions_matching(pattern, timeout=left())
        member = self._consumer.memberid()

        def describe(admin: Any) -> Any:
            future = admin.describe_consumer_groups([self._group], request_timeout=left())
            return future[self._group].result(timeout=left())

        group = admin_result(
            self._settings, f"describe consumer group {self._group}", describe, left()
        )
        if group.state in REBALANCING:
            return []
        others = {
            (tp.topic, tp.partition)
            for m in group.members
            if m.member_id != member and m.assignment is not None
            for tp in m.assignment.topic_partitions
        }
        return [tp for tp in partitions if tp not in others]

    def consume(self, max_messages: int, timeout: float) -> list[confluent_kafka.Message]:
        """Up to `max_messages` messages; also serves rebalance callbacks and resumes partitions
        whose backpressure time is up. Raises fatal errors."""
        self._resume_due()
        wanted = max(1, max_messages)
        messages = self._consumer.consume(num_messages=wanted, timeout=0)
        if not messages and timeout > 0:
            # librdkafka's batch consume waits out its whole timeout unless the batch fills:
            # records that came in the meantime waited too (docs/performance.md). Wait for the
            # first one, then take whatever else is there.
            messages = self._consumer.consume(num_messages=1, timeout=timeout)
            if messages and wanted > 1:
                messages += self._consumer.consume(num_messages=wanted - 1, timeout=0)
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

    def interrupt(self) -> None:
        """A stop: a commit waiting for its answer gives up now, and later ones at once (they
        raise, as commits with no answer do). Safe from a signal handler or another thread."""
        self._interrupted.set()

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit exactly `offsets` (next offsets to read), synchronously, waiting at most the
        commit timeout for the answer (less once `interrupt` is called); raise on any error, on
        no answer in time, and while an earlier commit still waits for its answer (commits stay
        in order)."""
        if self._unanswered is not None:
            if not self._unanswered.done.is_set():
                raise KafkaError(
                    "commit failed: an earlier commit still has no answer (group coordinator "
                    "unreachable or this member's session lapsed)"
                )
            self._unanswered = None
        listed = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        call = _Commit(self._consumer, listed)
        deadline = time.monotonic() + self._commit_timeout
        while not call.done.wait(min(_INTERRUPT_CHECK, max(0.0, deadline - time.monotonic()))):
            if self._interrupted.is_set() or time.monotonic() >= deadline:
                self._unanswered = call
                why = "a stop" if self._interrupted.is_set() else f"{self._commit_timeout:g} s"
                raise KafkaError(
                    f"commit failed: no answer within {why} (group coordinator unreachable or "
                    "this member's session lapsed)"
                )
        if call.error is not None:
            exc = call.error
            detail = exc.args[0] if isinstance(exc, confluent_kafka.KafkaException) else exc
            raise KafkaError(f"commit failed: {detail}") from exc
        result = call.result
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            detail = ", ".join(
                f"{tp.topic}[{tp.partition}]@{tp.offset}: {tp.error}" for tp in failed
            )
            raise KafkaError(f"commit failed for {detail}")

    def committed(
        self, partitions: Collection[Partition], timeout: float = QUERY_TIMEOUT
    ) -> dict[Partition, int]:
        """The group's committed offsets of `partitions` (assigned to this member or not); a
        partition with no committed offset is left out."""
        found = _call(
            "read committed offsets",
            self._consumer.committed,
            [TopicPartition(t, p) for t, p in partitions],
            timeout=timeout,
        )
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def positions(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        """The next offset this member will read of each of `partitions` (assigned to it); one
        whose position is not known yet is left out. Past what `consume` returned, librdkafka
        also moves it over what it never returns: transaction markers and aborted records."""
        found = _call(
            "read positions",
            self._consumer.position,
            [TopicPartition(t, p) for t, p in partitions],
        )
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def watermarks(
        self, topic: str, partition: int, cached: bool = False, timeout: float = QUERY_TIMEOUT
    ) -> tuple[int, int]:
        """(low, high) offsets of a partition: asked of the broker, or (`cached`) as last
        fetched (-1001 when unknown). Reading committed, the broker answers with the last
        stable offset as the high end (records of a transaction still open lie past it),
        while the cached high watermark counts those records too."""
        low, high = _call(
            f"read the offsets of {topic}[{partition}]",
            self._consumer.get_watermark_offsets,
            TopicPartition(topic, partition),
            timeout=timeout,
            cached=cached,
        )
        return int(low), int(high)

    def first_offset_since(
        self, topic: str, partition: int, timestamp_ms: int, timeout: float = QUERY_TIMEOUT
    ) -> int:
        """The offset of the first record of a partition written at or after `timestamp_ms`
        (POSIX milliseconds), as the broker tells; the partition's end when there is none."""
        found = _call(
            f"look up an offset by time in {topic}[{partition}]",
            self._consumer.offsets_for_times,
            [TopicPartition(topic, partition, timestamp_ms)],
            timeout=timeout,
        )
        if found[0].error is not None:
            raise KafkaError(
                f"cannot look up an offset by time in {topic}[{partition}]: {found[0].error}"
            )
        offset = int(found[0].offset)
        if offset >= 0:
            return offset
        return self.watermarks(topic, partition, timeout=timeout)[1]

    def delete_retention(
        self, topics: Collection[str], timeout: float = QUERY_TIMEOUT
    ) -> dict[str, float]:
        """Each topic's own `delete.retention.ms`, in seconds (how long the cleaner leaves its
        tombstones), as the broker tells, in one request for all of them; a topic it gave no
        figure for is left out. KafkaError when Kafka does not answer."""

        def describe(admin: Any) -> dict[str, Any]:
            resources = [ConfigResource(ResourceType.TOPIC, t) for t in sorted(set(topics))]
            futures = admin.describe_configs(resources, request_timeout=timeout)
            return {r.name: f.result(timeout=timeout) for r, f in futures.items()}

        configs = admin_result(self._settings, "describe the topics' configs", describe, timeout)
        return {
            topic: int(entries["delete.retention.ms"].value) / 1000.0
            for topic, entries in configs.items()
            if "delete.retention.ms" in entries
        }

    def stable_ends(
        self, partitions: Collection[Partition], timeout: float = QUERY_TIMEOUT
    ) -> dict[Partition, int]:
        """The end of each of `partitions` as a reader of committed records sees it (the last
        stable offset), asked of the brokers in one request each for all of them; a partition
        the broker gave no answer for is left out."""
        if not partitions:
            return {}
        found = _call(
            "read the ends of partitions",
            self._consumer.offsets_for_times,
            # Timestamp OFFSET_END (-1) asks for the end; the answer follows isolation.level.
            [TopicPartition(t, p, OFFSET_END) for t, p in partitions],
            timeout=timeout,
        )
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in found
            if tp.error is None and tp.offset >= 0
        }

    def partitions_matching(self, pattern: str, timeout: float = QUERY_TIMEOUT) -> list[Partition]:
        """Every partition of every topic whose name matches `pattern` (a regex)."""
        metadata = _call("list topics", self._consumer.list_topics, timeout=timeout)
        regex = re.compile(pattern)
        return [
            (name, p)
            for name, topic in metadata.topics.items()
            if regex.match(name) and topic.error is None
            for p in topic.partitions
        ]

    def assignment(self) -> list[Partition]:
        return _pairs(self._consumer.assignment())

    def hold(self, partitions: Collection[Partition]) -> None:
        """Keep exactly `partitions` paused (of those assigned) until a later `hold` leaves
        them out. Polling goes on, so the group keeps this member."""
        self._held = set(partitions)
        self._sync_pauses()

    def trigger_backpressure(self, seek_to: Mapping[Partition, int], resume_after: float) -> None:
        """Pause the partitions of `seek_to`, rewind each to its offset (read from there again),
        and resume them after `resume_after` seconds, from `consume`."""
        until = time.monotonic() + resume_after
        for tp in seek_to:
            self._backoff[tp] = max(until, self._backoff.get(tp, until))
        self._sync_pauses()
        for (topic, partition), offset in seek_to.items():
            # Seeking a paused partition moves its position; the records after it, fetched
            # before the pause, are discarded by librdkafka and read again on resume.
            _call(
                f"seek {topic}[{partition}]",
                self._consumer.seek,
                TopicPartition(topic, partition, offset),
            )

    @property
    def paused(self) -> frozenset[Partition]:
        return frozenset(self._paused)

    def _resume_due(self) -> None:
        if self._backoff:
            now = time.monotonic()
            self._backoff = {tp: t for tp, t in self._backoff.items() if t > now}
            self._sync_pauses()

    def _sync_pauses(self) -> None:
        wanted = (self._held | self._backoff.keys()) & set(self.assignment())
        pause, resume = wanted - self._paused, self._paused - wanted
        if pause:
            _call("pause partitions", self._consumer.pause, [TopicPartition(*tp) for tp in pause])
        if resume:
            _call(
                "resume partitions",
                self._consumer.resume,
                [TopicPartition(*tp) for tp in resume],
            )
        self._paused = wanted

    def close(self) -> None:
        """Leave the group (revoking our partitions through the callbacks) and close, within
        its close timeout (CLOSE_TIMEOUT): past it the close goes on on its own thread, and
        this returns."""
        close_within(self._consumer.close, self._close_timeout, "leave the consumer group")


def _pairs(partitions: Sequence[TopicPartition]) -> list[Partition]:
    return [(tp.topic, tp.partition) for tp in partitions]


def _call(what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return method(*args, **kwargs)
    except confluent_kafka.KafkaException as exc:
        raise KafkaError(f"cannot {what}: {exc.args[0]}") from exc


class _Commit:
    """One synchronous commit, made on a thread of its own so that its caller can stop waiting
    for it (a daemon thread: one that never returns does not hold the process's exit)."""

    def __init__(self, consumer: confluent_kafka.Consumer, offsets: list[TopicPartition]) -> None:
        self.done = threading.Event()
        self.result: list[TopicPartition] | None = None
        self.error: Exception | None = None
        self._consumer = consumer
        self._offsets = offsets
        threading.Thread(target=self._run, name="commit", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._consumer.commit(offsets=self._offsets, asynchronous=False)
        except Exception as exc:  # raised in the caller's thread, whatever it is
            self.error = exc
        finally:
            self.done.set()
