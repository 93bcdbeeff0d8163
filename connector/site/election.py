"""Which of a site's pollers publishes: election through Kafka, fencing, the standby's life.

Every `produce` process of a site contends for the site's lease (`connector.kafka.lease`: the
member of group `<prefix>-lease.<site>` given partition 0 of the one-partition topic of that
name). The holder becomes active: it opens the site's transactional producer, whose
`init_transactions()` fences whichever producer published before (aborting its open
transaction), and only then reads the committed contents of the site topic to its end and builds
the poller on the fingerprints and sequence found there. The others stand by: they keep serving
/metrics and /readyz (ready, role standby), follow the site topic (so a take-over reads only
what is new, however large the site), and take over when the lease comes to them.

An active instance steps down when it loses the lease (its session expired: it was paused or
cut off) or when its producer is fenced (another instance took over meanwhile); it drops the
poller and everything it believed published, leaves the group and contends again, as a standby.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from connector.codecs import codec_from_settings
from connector.config import Settings, SiteSettings
from connector.errors import ConfigError, ConnectorError, KafkaAccessError, KafkaError
from connector.kafka.client import close_within
from connector.kafka.lease import Lease
from connector.kafka.topics import (
    ensure_lease_topic,
    ensure_site_topic,
    lease_topic,
    producer_limits,
    site_topic,
)
from connector.kafka.transactions import TransactionalProducer, TransactionFailed
from connector.records.model import INSTANCE_HEADER, DetailValue
from connector.site.backoff import backoff_delay
from connector.site.heartbeat import Health
from connector.site.restore import Restored, TopicFollower
from connector.site.site_metrics import SiteMetrics
from connector.site.startup import Stopped, until_kafka_answers

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between polls of the lease (callbacks, loss of the session noticed).
LEASE_POLL = 0.2
#: Seconds between a standby's reads of the site topic once it has caught up.
FOLLOW_INTERVAL = 1.0
#: Lease timeouts an active term goes on with its lease in doubt (see `Election._watch`).
IN_DOUBT_LEASES = 3
#: Seconds leaving the lease group may take before it is left to finish on its own thread: with
#: the broker down librdkafka's close waits for it far longer than a stop may (10 s in all).
LEASE_CLOSE = 2.0
LEASE_LEAVE = "leave the lease group"
#: Heartbeats a standby sees missed from its site before it suspects its lease client (`_stand_by`).
LEASE_STALL_HEARTBEATS = 6
#: Seconds a standby's last read of the site topic may be old and still count as Kafka answering.
LEASE_STALL_READ = 10.0


class LeaseUnavailable(ConnectorError):
    """A `--once` run could not get the site's lease: another poller of the site is active."""


class Active(Protocol):
    """What the active instance runs: the site's poller."""

    health: Health

    def run(self, stop: threading.Event, once: bool = False) -> None: ...


def instance_id(site: SiteSettings) -> str:
    """This process's name among the site's pollers: `site.instance_id`, or `<host>:<pid>`."""
    return site.instance_id or f"{socket.gethostname()}:{os.getpid()}"


class Election:
    """One process's part in its site's election; `run` stands by and is active in turn."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        if not settings.site.name:
            raise ConfigError("site.name: required (--site or CASCADE_SITE_NAME)")
        self.settings = settings
        self.site = settings.site.name
        self.instance = instance_id(settings.site)
        #: what the site topic is read and written with, made once for every term
        self.codec = codec_from_settings(settings.kafka)
        self.lease_topic = lease_topic(settings.kafka.topic_prefix, self.site)
        self.site_topic = site_topic(settings.kafka.topic_prefix, self.site)
        #: the poller's metrics, made once: each active term's poller reports into them
        self.metrics = SiteMetrics(registry, self.site)
        self._active: Active | None = None
        #: True from getting the lease until the term's poller runs (fencing, reading the topic)
        self._starting = False
        #: the last Kafka error of a step outside an active term, until a step succeeds
        self._kafka_error: str | None = None
        self._error: ConnectorError | None = None
        #: why this standby suspects its lease client (see `_stand_by`), until it is not
        self._stalled: str | None = None
        self.metrics.active.labels(self.site).set(0)

    def __repr__(self) -> str:
        return f"Election({self.lease_topic}, {self.instance}, {self._role()})"

    def _role(self) -> str:
        if self._active is not None:
            return "active"
        return "starting" if self._starting else "standby"

    def ready(self) -> tuple[bool, dict[str, DetailValue]]:
        """/readyz: a standby is ready (to take over) unless Kafka fails it; an active term
        that is starting is not ready while Kafka fails it; the active reports its poller."""
        active = self._active
        if active is None:
            details: dict[str, DetailValue] = {"role": self._role(), "instance": self.instance}
            error = self._kafka_error
            if error is not None:
                details["kafka.error"] = error
            stalled = self._stalled
            if stalled is not None:
                details["lease.stalled"] = stalled
            return error is None and stalled is None, details
        healthy, details = active.health.snapshot()
        return healthy, {"role": "active", "instance": self.instance, **details}

    def run(
        self,
        stop: threading.Event,
        once: bool,
        make_active: Callable[[TransactionalProducer, Restored], Active],
    ) -> None:
        """Stand by until this instance holds the lease, be active until it loses it, again,
        until `stop`. With `once`: one active term (LeaseUnavailable if the lease does not come
        within three lease timeouts), then return. Transient Kafka trouble is retried with
        backoff (`startup.py`), never an exit; refused credentials end the run."""
        self.start_up(stop)
        failures = 0
        while not stop.is_set():
            try:
                self._term(stop, once, make_active)
                failures = 0
            except (KafkaAccessError, LeaseUnavailable):
                raise
            except KafkaError as exc:
                if once:
                    raise
                failures += 1
                self._kafka_trouble(str(exc))
                delay = backoff_delay(self.settings.site, failures, random.random())
                log.warning("%s: %s; standing by again in %.1fs", self.instance, exc, delay)
                stop.wait(delay)
                continue
            if once:
                return

    def start_up(self, stop: threading.Event) -> None:
        """Ensure the site topic (first: it is what the poller is for, so a principal that may
        not write it is told about that topic), then the lease topic; once per process."""
        kafka = self.settings.kafka
        for what, ensure in (
            ("ensure the site topic", ensure_site_topic),
            ("ensure the lease topic", ensure_lease_topic),
        ):
            report = self._until_kafka_answers(what, partial(ensure, kafka, self.site), stop)
            for line in report.lines():
                log.info("%s", line)

    def _kafka_trouble(self, error: str) -> None:
        """A step failed for Kafka's sake (retried): counted, and degraded until one succeeds."""
        self.metrics.kafka_errors.labels(self.site).inc()
        if self._active is None:
            self._kafka_error = error
            self.metrics.degraded.labels(self.site).set(1)

    def _kafka_answered(self) -> None:
        if self._kafka_error is not None:
            self._kafka_error = None
            self.metrics.degraded.labels(self.site).set(0)

    def _until_kafka_answers(
        self,
        what: str,
        call: Callable[[], T],
        stop: threading.Event,
        discard: Callable[[T], None] | None = None,
    ) -> T:
        """A step of the election or of a term's start: retried while Kafka fails it, given up
        (Stopped) as soon as `stop` is set."""
        result = until_kafka_answers(
            what, call, stop, self.settings.site, self._kafka_trouble, discard
        )
        self._kafka_answered()
        return result

    def _term(
        self,
        stop: threading.Event,
        once: bool,
        make_active: Callable[[TransactionalProducer, Restored], Active],
    ) -> None:
        """One turn: stand by until the lease comes, then one active term. A standby that sees
        its site silent while Kafka answers rejoins the lease group with a new client."""
        if not stop.is_set():
            with ExitStack() as cleanup:
                lease = self._join_lease()
                # A lambda, not lease.close itself: it closes whichever client is current then.
                cleanup.callback(lambda: close_within(lease.close, LEASE_CLOSE, LEASE_LEAVE))
                follower = self._follower(stop)
                cleanup.callback(follower.close)
                follower.follow(FOLLOW_INTERVAL)
                while (outcome := self._stand_by(lease, follower, stop, once)) == "rejoin":
                    close_within(lease.close, LEASE_CLOSE, LEASE_LEAVE)
                    lease = self._join_lease()
                if outcome == "held":
                    self._be_active(lease, follower, stop, once, make_active)

    def _join_lease(self) -> Lease:
        return Lease(
            self.settings.kafka,
            self.lease_topic,
            self.lease_topic,
            self.settings.site.lease_timeout,
            client_id=self.instance,
        )

    def take_over(self, stop: threading.Event) -> tuple[TransactionalProducer, Restored]:
        """What a term does before its poller runs, without the lease: for a poller that does
        not contend (tests, benchmarks). Call `start_up` first. The producer's failures are
        left to its `flush` to raise."""
        follower = self._follower(stop)
        try:
            producer = self._open_producer(lambda _failure: None, stop)
            self._read_to_end(follower, stop)
        finally:
            follower.close()
        return producer, follower.restored

    def _follower(self, stop: threading.Event) -> TopicFollower:
        """The site topic's follower; reading its partitions and marks waits for the broker:
        while it is down, retried with backoff, and abandoned at once on a stop."""
        return self._until_kafka_answers(
            "read the site topic",
            lambda: TopicFollower(
                self.settings.kafka, self.site_topic, self.codec, self.settings.site.kinds
            ),
            stop,
            discard=TopicFollower.close,
        )

    def _open_producer(
        self, on_failure: Callable[[TransactionFailed], None], halt: threading.Event
    ) -> TransactionalProducer:
        """The site's transactional producer (id: the site topic's name), every message headed
        with this instance's id, and its messages and batches within the topic's
        max.message.bytes as read now (`producer_limits`). Opening it fences the site's previous
        producer, which waits for the transaction coordinator (loading after a broker restart,
        say): retried while Kafka fails it, given up on `halt`; an abandoned producer has
        nothing queued and is dropped when its call returns."""
        kafka = self.settings.kafka

        def open_() -> TransactionalProducer:
            limits: dict[str, Any] = producer_limits(kafka, self.site_topic)
            return TransactionalProducer(
                kafka,
                self.site_topic,
                {INSTANCE_HEADER: self.instance.encode()},
                on_failure,
                on_error=self._producer_error,
                **limits,
            )

        return self._until_kafka_answers("open the producer", open_, halt)

    def _producer_error(self, error: str) -> None:
        """The producer's client errors (brokers out of reach): the term's poller is degraded
        by them, or, while no poller runs, the election."""
        active = self._active
        if active is not None:
            active.health.kafka_failed(error)
        else:
            self._kafka_trouble(error)

    def _read_to_end(self, follower: TopicFollower, halt: threading.Event) -> None:
        """Read the site topic to its end. Only once the previous producer is fenced and its
        last transaction ended is that end everything it will ever have published."""
        if not follower.catch_up(halt=halt):
            raise Stopped("the term ended while reading the site topic")

    def _stand_by(
        self, lease: Lease, follower: TopicFollower, stop: threading.Event, once: bool
    ) -> Literal["held", "stopped", "rejoin"]:
        """Poll the lease until it is held or `stop` is set; "rejoin" when no poller of the site
        has published for `stall_after()` seconds while the site topic reads to its end: no
        instance publishes, and this one has not been given the lease (a group client stuck
        without an assignment, as librdkafka has had bugs of; or a member of the lease group
        that holds the lease and does not poll). Counted, said by /readyz until a message or
        the lease comes."""
        log.info("%s: standby for site %s (lease %s)", self.instance, self.site, self.lease_topic)
        began = time.monotonic()
        deadline = began + 3 * self.settings.site.lease_timeout
        stall_after = self.stall_after()
        while not stop.is_set():
            if lease.poll(LEASE_POLL):
                self._stalled = None
                return "held"
            now = time.monotonic()
            if once and now > deadline:
                raise LeaseUnavailable(
                    f"another poller of site {self.site} holds its lease ({self.lease_topic}); "
                    "--once runs only when none is active"
                )
            silent = now - follower.last_message_at
            answered = follower.reached_end_at is not None and follower.reached_end_at > now - (
                FOLLOW_INTERVAL + LEASE_STALL_READ
            )
            if silent < stall_after:
                self._stalled = None
            elif answered and now - began >= stall_after:
                self._stalled = (
                    f"no poller of site {self.site} has published for {silent:.0f} s while "
                    f"Kafka answers, and this standby has not been given the lease"
                )
                log.warning("%s: %s: rejoining the lease group", self.instance, self._stalled)
                self.metrics.lease_rejoins.labels(self.site).inc()
                return "rejoin"
        return "stopped"

    def stall_after(self) -> float:
        """Seconds of a silent site topic after which a standby rejoins the lease group: six
        heartbeats of an active poller missed, and never less than three lease timeouts (a
        take-over's own gap)."""
        site = self.settings.site
        return max(LEASE_STALL_HEARTBEATS * site.heartbeat_interval, 3 * site.lease_timeout)

    def _be_active(
        self,
        lease: Lease,
        follower: TopicFollower,
        stop: threading.Event,
        once: bool,
        make_active: Callable[[TransactionalProducer, Restored], Active],
    ) -> None:
        """One term: fence, read what is new, run the poller until the term ends; a failed or
        fenced transaction ends it quietly (a standby again), other errors propagate."""
        log.info("%s: holds the lease of site %s, taking over", self.instance, self.site)
        # Set when the term must end: stop, the lease lost, the producer fenced or failed.
        term = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(lease, stop, term), name="lease", daemon=True
        )
        watcher.start()
        failed: list[TransactionFailed] = []

        def on_failure(failure: TransactionFailed) -> None:
            failed.append(failure)
            term.set()

        lost = False
        self._starting = True
        try:
            active = self._start_term(follower, term, on_failure, make_active)
            active.run(term, once)
            lost = term.is_set() and not stop.is_set() and not failed
        except TransactionFailed as exc:
            if once:
                raise
            log.warning("%s: stepping down to standby: %s", self.instance, exc)
        except Stopped:
            if stop.is_set():
                raise
            lost = not failed  # the lease went while the term was starting
        finally:
            self._active = None
            self._starting = False
            # The term's poller kept the gauge; a standby is degraded only by its own trouble.
            self.metrics.degraded.labels(self.site).set(1 if self._kafka_error else 0)
            self.metrics.active.labels(self.site).set(0)
            term.set()
            watcher.join()
        if self._error is not None:
            raise self._error
        if lost and once:
            raise LeaseUnavailable(f"lost the lease of site {self.site} during --once")
        if lost:
            log.warning("%s: lost the lease of site %s, standing by", self.instance, self.site)

    def _start_term(
        self,
        follower: TopicFollower,
        term: threading.Event,
        on_failure: Callable[[TransactionFailed], None],
        make_active: Callable[[TransactionalProducer, Restored], Active],
    ) -> Active:
        """Fence the previous producer, read what is new in the site topic, make the term's
        poller; Stopped when the term ends first."""
        started = time.monotonic()
        follower.stop_following()
        followed = follower.restored.messages
        producer = self._open_producer(on_failure, term)
        self._read_to_end(follower, term)
        active = make_active(producer, follower.restored)
        self._active = active
        self._starting = False
        self.metrics.active.labels(self.site).set(1)
        log.info(
            "%s: active for site %s, %.1f s after getting the lease (%d message(s) of the "
            "site topic read as a standby, %d after)",
            self.instance,
            self.site,
            time.monotonic() - started,
            followed,
            follower.restored.messages - followed,
        )
        return active

    def _watch(self, lease: Lease, stop: threading.Event, term: threading.Event) -> None:
        """End the term when `stop` is set or the lease is lost. A lease in doubt (this
        member's session lapsed with the coordinator out of reach: a broker restart) ends it
        only once IN_DOUBT_LEASES lease timeouts passed since the doubt began and since the
        brokers were last out of reach: no other member can be given the lease before the
        coordinator answers, and one that is then fences this producer first; if the lease
        comes back meanwhile, the outage cost no take-over."""
        doubted: float | None = None
        patience = IN_DOUBT_LEASES * self.settings.site.lease_timeout
        while not term.is_set():
            if stop.is_set():
                term.set()
                return
            try:
                held = lease.poll(LEASE_POLL)
            except ConnectorError as exc:
                self._error = exc
                term.set()
                return
            if held:
                if doubted is not None:
                    log.info("%s: holds the lease of site %s again", self.instance, self.site)
                doubted = None
            elif not lease.in_doubt:
                term.set()
            elif doubted is None:
                doubted = time.monotonic()
                log.warning(
                    "%s: the lease of site %s is in doubt (session lapsed, Kafka out of reach); "
                    "active on while it may come back (up to %.0f s once Kafka answers)",
                    self.instance,
                    self.site,
                    patience,
                )
            elif time.monotonic() - max(doubted, lease.unreachable_at or 0.0) > patience:
                term.set()
