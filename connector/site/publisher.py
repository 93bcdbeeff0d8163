"""Publishing a site's changes: fingerprints per key, the site sequence, tombstones, heartbeats.

The publisher keeps one content fingerprint per object (`connector.records.fingerprint`) and
publishes an observation only when it changed. Every record and tombstone gets the next per-site
sequence number. A delivery error marks the key dirty, so the next poll that sees the object
sends it again: an error is counted and surfaced, never lost.

Sequence numbers are `max(last + 1, now in microseconds)`: they grow across restarts because the
last one is restored from the topic, and they keep growing even when the topic was emptied or
lost, as long as the clock does not go back further than the restored state reaches. A sequence
that cannot grow further (a record near 2^63 in the topic) starts a new epoch from the clock:
logged as an error, counted, and shown in the heartbeat (docs/site.md, *Sequence epochs*).

An observation that cannot become a message (it breaks the record rules, cannot be encoded, or
the producer refuses it) raises `Unreadable`: the poller skips that object, nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from connector.kafka import ClientError
from connector.kafka.client import RepeatedErrors
from connector.kafka.producer import DeliveryCallback, MessageRefused
from connector.records.codec import Codec
from connector.records.fingerprint import content_fingerprint
from connector.records.messages import KafkaMessage, to_message
from connector.records.model import (
    HEARTBEAT_KIND,
    SEQUENCE_MAX,
    Deletion,
    DetailValue,
    StatusRecord,
)
from connector.site.heartbeat import Health
from connector.site.kinds import Observation, Unreadable
from connector.site.site_metrics import SiteMetrics

log = logging.getLogger(__name__)
#: A broker outage fails every message in flight alike: a line per error, not per message.
_DELIVERY_ERRORS = RepeatedErrors(log)

#: A key whose last message failed: whatever is observed next is sent.
DIRTY = -1
#: A key whose tombstone is in flight: forgotten once it is delivered.
DELETING = -2


def observation_fingerprint(obs: Observation) -> int:
    return content_fingerprint(obs.status, obs.name, obs.project_id, obs.details)


class _KindCounters:
    """One kind's children of the publisher's counters."""

    def __init__(self, metrics: SiteMetrics, site: str, kind: str) -> None:
        self.published = metrics.published.labels(site, kind)
        self.unchanged = metrics.unchanged.labels(site, kind)
        self.tombstones = metrics.tombstones.labels(site, kind)


class Outlet(Protocol):
    """What the publisher needs of a producer: a `Producer`, or the site's transactional one."""

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        on_delivery: DeliveryCallback,
        headers: Mapping[str, bytes] | None = None,
    ) -> None: ...


class Publisher:
    """Publishes one site's changes to its topic; thread-safe, one instance per site."""

    def __init__(
        self,
        site: str,
        topic: str,
        producer: Outlet,
        codec: Codec,
        metrics: SiteMetrics,
        health: Health,
        fingerprints: Mapping[str, dict[str, int]],
        last_sequence: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self.topic = topic
        self._producer = producer
        self._codec = codec
        self._metrics = metrics
        #: the metrics' children, looked up once (per kind: on first use), not per record
        self._counted: dict[str, _KindCounters] = {}
        self._health = health
        self._clock = clock
        # Re-entrant: librdkafka runs delivery callbacks inside produce(), under this lock.
        self._lock = threading.RLock()
        self._fingerprints = {kind: dict(fps) for kind, fps in fingerprints.items()}
        #: per kind, ids marked DIRTY since `dirty_ids` last looked (a superset of the dirty
        #: ones: a later message may have replaced the mark), so that it need not scan every
        #: fingerprint: the pollers ask before every poll
        self._marked: dict[str, set[str]] = {}
        self._sequence = last_sequence
        # Read when scraped rather than set per record.
        metrics.sequence.labels(site).set_function(lambda: self._sequence)

    @property
    def sequence(self) -> int:
        """The last sequence number given out."""
        with self._lock:
            return self._sequence

    def known_ids(self, kind: str) -> set[str]:
        """Ids of the objects of `kind` the topic holds (or is about to hold) a record for."""
        with self._lock:
            fps = self._fingerprints.get(kind, {})
            return {object_id for object_id, fp in fps.items() if fp != DELETING}

    def dirty_ids(self, kind: str) -> set[str]:
        """Ids whose last message failed and must be sent again."""
        with self._lock:
            fps = self._fingerprints.get(kind, {})
            dirty = {i for i in self._marked.get(kind, ()) if fps.get(i) == DIRTY}
            self._marked[kind] = dirty
            return set(dirty)

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self._fingerprints.get(kind, {}))

    def observe(self, kind: str, obs: Observation) -> bool:
        """Publish `obs` if its status changed (a deleted one as a tombstone); True if published."""
        if obs.deleted:
            return self.delete(kind, obs.id)
        fp = observation_fingerprint(obs)
        with self._lock:
            fps = self._fingerprints.setdefault(kind, {})
            if fps.get(obs.id) == fp:
                self._counters(kind).unchanged.inc()
                return False
            record = StatusRecord(
                site=self.site,
                kind=kind,
                id=obs.id,
                status=obs.status,
                sequence=self._next_sequence(),
                observed_at=datetime.now(UTC),
                name=obs.name,
                project_id=obs.project_id,
                details=obs.details,
                source_updated_at=obs.source_updated_at,
                revision=obs.revision,
            )
            try:
                # Checked already: the site name at start (the election), the sequence and times
                # are ours, and the kinds table's conversion keeps the id, the details and the
                # revision to the record's types and ranges (`Kind.observe`). What can still fail
                # (a key with a lone surrogate) is about this object only.
                message = to_message(record, self._codec, checked=True)
            except Exception as exc:
                raise Unreadable(kind, obs.id, f"cannot encode: {exc}") from exc
            previous = fps.get(obs.id)
            fps[obs.id] = fp
            try:
                self._send(message, partial(self._delivered, kind, obs.id, fp))
            except MessageRefused as exc:
                # Never queued: the topic holds what it held before.
                if previous is None:
                    del fps[obs.id]
                else:
                    fps[obs.id] = previous
                raise Unreadable(kind, obs.id, f"refused by the producer: {exc}") from exc
        self._counters(kind).published.inc()
        return True

    def delete(self, kind: str, object_id: str) -> bool:
        """Publish a tombstone for a known object; True if one was published."""
        with self._lock:
            fps = self._fingerprints.get(kind, {})
            if fps.get(object_id, DELETING) == DELETING:
                return False
            fps[object_id] = DELETING
            deletion = Deletion(self.site, kind, object_id, self._next_sequence())
            on_delivery = partial(self._delivered, kind, object_id, DELETING)
            self._send(to_message(deletion, self._codec), on_delivery)
        self._counters(kind).tombstones.inc()
        return True

    def heartbeat(self, status: str, details: Mapping[str, DetailValue]) -> None:
        """Publish the site heartbeat; always sent, never deduplicated."""
        with self._lock:
            record = StatusRecord(
                site=self.site,
                kind=HEARTBEAT_KIND,
                id=self.site,
                status=status,
                sequence=self._next_sequence(),
                observed_at=datetime.now(UTC),
                # Error texts quote what failed, which may not encode (a lone surrogate).
                details={
                    key: value.encode("utf-8", "backslashreplace").decode("utf-8")
                    if isinstance(value, str)
                    else value
                    for key, value in details.items()
                },
            )
            self._send(to_message(record, self._codec), self._on_heartbeat_delivery)
        self._metrics.heartbeats.labels(self.site).inc()

    def _send(self, message: KafkaMessage, on_delivery: DeliveryCallback) -> None:
        headers = dict(message.headers) if message.headers else None
        self._producer.produce(self.topic, message.key, message.value, on_delivery, headers)

    def _counters(self, kind: str) -> _KindCounters:
        counters = self._counted.get(kind)
        if counters is None:
            counters = self._counted[kind] = _KindCounters(self._metrics, self.site, kind)
        return counters

    def _next_sequence(self) -> int:
        now = int(self._clock() * 1_000_000)
        following = max(self._sequence + 1, now)
        if following > SEQUENCE_MAX:
            following = self._new_epoch(now)
        self._sequence = following
        return self._sequence

    def _new_epoch(self, now: int) -> int:
        """The sequence cannot grow past SEQUENCE_MAX: start again from the clock (see the
        module's docstring), loudly."""
        log.error(
            "site %s: sequence %d cannot grow further (the 64-bit limit; a record with a "
            "sequence near it is in the topic): a new epoch starts from the clock, at %d. The top "
            "layer keeps refusing changes to rows whose sequence is higher (from the old epoch) "
            "until they are cleared: see docs/site.md, 'Sequence epochs'",
            self.site,
            self._sequence,
            now,
        )
        self._metrics.sequence_epochs.labels(self.site).inc()
        self._health.new_epoch(f"sequence {self._sequence} could not grow; new epoch at {now}")
        return now

    def _delivered(
        self,
        kind: str,
        object_id: str,
        sent: int,
        key: str,
        err: ClientError | None,
        _partition: int,
        _offset: int,
    ) -> None:
        """The delivery report of what was `sent` for an object (its fingerprint, or DELETING)."""
        with self._lock:
            fps = self._fingerprints.get(kind, {})
            # When a newer message for the key is in flight, its own report decides.
            if fps.get(object_id) == sent:
                if err is not None:
                    fps[object_id] = DIRTY
                    self._marked.setdefault(kind, set()).add(object_id)
                elif sent == DELETING:
                    del fps[object_id]
        if err is not None:
            _DELIVERY_ERRORS.report(
                logging.ERROR, str(err), f"delivery failed, will resend ({key} first): "
            )
            self._health.delivery_failed(f"{key}: {err}")

    def _on_heartbeat_delivery(self, key: str, err: ClientError | None, _p: int, _o: int) -> None:
        if err is not None:
            _DELIVERY_ERRORS.report(
                logging.ERROR, str(err), f"delivery failed ({key}, a heartbeat, first): "
            )
            self._health.delivery_failed(f"{key}: {err}")
