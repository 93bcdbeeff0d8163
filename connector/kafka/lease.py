"""A lease held through Kafka's group membership: the member given partition 0 of a lease topic.

Each contender joins the same consumer group on a one-partition topic; the group coordinator
gives the partition to one member at a time. Nothing is read from the topic or committed: the
assignment is the lease. The classic group protocol is used on purpose, because it lets the
client choose a short session timeout (the broker-driven protocol of KIP-848 has a broker-side
minimum of 45 s); with cooperative-sticky assignment a member that joins later does not take
the partition from the one that holds it. A holder that stops heartbeating (killed, paused,
cut off) loses it after the session timeout; one that leaves (close) gives it up at once.

A holder whose own session lapsed without a rebalance telling it (the coordinator out of reach:
a broker restart, a network cut, a pause) is `in_doubt` until the group answers again: the
lease may still come back to it, or be given to another member. `unreachable_at` says when the
client last found the brokers out of reach.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from connector.errors import ConfigError, KafkaError
from connector.kafka.client import log_client_error, new_client
from connector.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

#: The partition whose holder holds the lease.
LEASE_PARTITION = 0

#: Client errors that mean the brokers are out of reach (served by `poll`).
_UNREACHABLE = {
    confluent_kafka.KafkaError._TRANSPORT,
    confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
    confluent_kafka.KafkaError._TIMED_OUT,
}

LEASE_DEFAULTS: dict[str, Any] = {
    "group.protocol": "classic",
    "partition.assignment.strategy": "cooperative-sticky",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "latest",
}


class Lease:
    """One contender for the lease of `topic`, as a member of group `group`.

    `poll` must be called every few hundred milliseconds, from one thread at a time: it serves
    the group's callbacks, and a member that stops polling for `session_timeout * 3` leaves.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        group: str,
        session_timeout: float,
        client_id: str,
    ) -> None:
        self.topic = topic
        self.session_timeout = session_timeout
        session_ms = int(session_timeout * 1000)
        config = {
            **LEASE_DEFAULTS,
            **settings.client_config(),
            "group.id": group,
            "client.id": client_id,
            "session.timeout.ms": session_ms,
            # A standby learns that the holder's session ended on its next heartbeat.
            "heartbeat.interval.ms": max(100, session_ms // 10),
            # A holder whose process runs but no longer polls (a stuck thread) leaves the group.
            "max.poll.interval.ms": max(session_ms * 3, 10_000),
        }
        #: monotonic time of the last error saying the brokers are out of reach (None: never)
        self.unreachable_at: float | None = None
        report = config.get("error_cb", log_client_error)

        def client_error(err: confluent_kafka.KafkaError) -> None:
            if err.code() in _UNREACHABLE:
                self.unreachable_at = time.monotonic()
            report(err)

        config["error_cb"] = client_error
        self._lock = threading.Lock()
        self._held = False
        self._in_doubt = False
        self._consumer = new_client(confluent_kafka.Consumer, config)
        self._consumer.subscribe(
            [topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )

    def __repr__(self) -> str:
        return f"Lease({self.topic}, held={self.held}, in_doubt={self.in_doubt})"

    @property
    def held(self) -> bool:
        with self._lock:
            return self._held

    @property
    def in_doubt(self) -> bool:
        """Held until this member's session lapsed on its side (no heartbeat answered), and
        neither given back nor taken away by the group since."""
        with self._lock:
            return self._in_doubt

    def poll(self, timeout: float) -> bool:
        """Serve the group protocol for up to `timeout` seconds; whether the lease is held.

        ConfigError when the broker refuses the session timeout; KafkaError on a fatal error.
        """
        msg = self._consumer.poll(timeout)
        err = None if msg is None else msg.error()
        if err is not None:
            if err.code() == confluent_kafka.KafkaError.INVALID_SESSION_TIMEOUT:
                raise ConfigError(
                    f"site.lease_timeout: the broker refuses a session timeout of "
                    f"{self.session_timeout:g} s ({err.str()}); expected a value between its "
                    "group.min.session.timeout.ms (6 s by default) and group.max.session.timeout.ms"
                )
            if err.fatal():
                raise KafkaError(f"lease {self.topic}: fatal consumer error: {err.str()}")
            log.warning("lease %s: %s", self.topic, err.str())
        return self.held

    def close(self) -> None:
        """Leave the group: a lease held passes to another member at once."""
        self._consumer.close()
        with self._lock:
            self._held = self._in_doubt = False

    def _assigned(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Cooperative assignment: `partitions` are the ones added, not the whole assignment.
        if any(p.partition == LEASE_PARTITION for p in partitions):
            with self._lock:
                self._held, self._in_doubt = True, False

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if any(p.partition == LEASE_PARTITION for p in partitions):
            with self._lock:
                self._held = self._in_doubt = False

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if any(p.partition == LEASE_PARTITION for p in partitions):
            with self._lock:
                self._held, self._in_doubt = False, True
