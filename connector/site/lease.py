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
from typing import Protocol

from prometheus_client import CollectorRegistry

from connector.codecs import codec_from_settings
from connector.config import Settings, SiteSettings
from connector.errors import ConfigError, ConnectorError, KafkaAccessError, KafkaError
from connector.kafka.lease import Lease
from connector.kafka.topics import ensure_lease_topic, ensure_site_topic, lease_topic, site_topic
from connector.kafka.transactions import TransactionalProducer, TransactionFailed
from connector.records.model import INSTANCE_HEADER, DetailValue
from connector.site.heartbeat import Health
from connector.site.metrics import SiteMetrics
from connector.site.poller import backoff_delay
from connector.site.restore import Restored, TopicFollower
from connector.site.startup import until_kafka_answers

log = logging.getLogger(__name__)

#: Seconds between polls of the lease (callbacks, loss of the session noticed).
LEASE_POLL = 0.2
#: Seconds between a standby's reads of the site topic once it has caught up.
FOLLOW_INTERVAL = 1.0


class LeaseUnavailable(ConnectorError):
    """A `--once` run could not get the site's lease: another poller of the site is active."""


class Active(Protocol):
    """What the active instance runs: the site's poller."""

    health: Health

    def run(self, stop: threading.Event, once: bool = False) -> None: ...


def instance_id(site: SiteSettings) -> str:
    """This process's name among the site's pollers: `site.instance_id`, or `<host>:<pid>`."""
    return site.instance_id or f"{socket.gethostname()}:{os.getpid()}"


def open_site_producer(
    settings: Settings,
    on_failure: Callable[[TransactionFailed], None],
    on_error: Callable[[str], None] | None = None,
) -> TransactionalProducer:
    """The site's transactional producer (id: the site topic's name), every message headed
    with this instance's id. Opening it fences the site's previous producer."""
    site = _site_name(settings)
    return TransactionalProducer(
        settings.kafka,
        site_topic(settings.kafka.topic_prefix, site),
        {INSTANCE_HEADER: instance_id(settings.site).encode()},
        on_failure,
        on_error=on_error,
    )


class Election:
    """One process's part in its site's election; `run` stands by and is active in turn."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.site = _site_name(settings)
        self.instance = instance_id(settings.site)
        self.lease_topic = lease_topic(settings.kafka.topic_prefix, self.site)
        self.site_topic = site_topic(settings.kafka.topic_prefix, self.site)
        #: the poller's metrics, made once: each active term's poller reports into them
        self.metrics = SiteMetrics(registry, self.site)
        self._active: Active | None = None
        self._error: ConnectorError | None = None
        self.metrics.active.labels(self.site).set(0)

    def __repr__(self) -> str:
        role = "active" if self._active is not None else "standby"
        return f"Election({self.lease_topic}, {self.instance}, {role})"

    def ready(self) -> tuple[bool, dict[str, DetailValue]]:
        """/readyz: a standby is ready (to take over); the active reports its poller."""
        active = self._active
        if active is None:
            return True, {"role": "standby", "instance": self.instance}
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
        self._start_up(stop)
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

    def _start_up(self, stop: threading.Event) -> None:
        """The site topic (first: it is what the poller is for, so a principal that may not
        write it is told about that topic), then the lease topic."""
        site = self.settings.site
        kafka = self.settings.kafka
        until_kafka_answers(
            "ensure the site topic",
            lambda: ensure_site_topic(kafka, self.site),
            stop,
            site,
            self._kafka_trouble,
        )
        report = until_kafka_answers(
            "ensure the lease topic",
            lambda: ensure_lease_topic(kafka, self.site),
            stop,
            site,
            self._kafka_trouble,
        )
        for line in report.lines():
            log.info("%s", line)

    def _kafka_trouble(self, error: str) -> None:
        self.metrics.kafka_errors.labels(self.site).inc()

    def _term(
        self,
        stop: threading.Event,
        once: bool,
        make_active: Callable[[TransactionalProducer, Restored], Active],
    ) -> None:
        """One turn: stand by until the lease comes, then one active term."""
        if not stop.is_set():
            with ExitStack() as cleanup:
                lease = Lease(
                    self.settings.kafka,
                    self.lease_topic,
                    self.lease_topic,
                    self.settings.site.lease_timeout,
                    client_id=self.instance,
                )
                cleanup.callback(lease.close)
                follower = TopicFollower(
                    self.settings.kafka,
                    self.site_topic,
                    codec_from_settings(self.settings.kafka),
                    self.settings.site.kinds,
                )
                cleanup.callback(follower.close)
                follower.follow(FOLLOW_INTERVAL)
                if self._stand_by(lease, stop, once):
                    self._be_active(lease, follower, stop, once, make_active)

    def _stand_by(self, lease: Lease, stop: threading.Event, once: bool) -> bool:
        """Poll the lease until it is held (True) or `stop` is set (False)."""
        log.info("%s: standby for site %s (lease %s)", self.instance, self.site, self.lease_topic)
        deadline = time.monotonic() + 3 * self.settings.site.lease_timeout
        while not stop.is_set():
            if lease.poll(LEASE_POLL):
                return True
            if once and time.monotonic() > deadline:
                raise LeaseUnavailable(
                    f"another poller of site {self.site} holds its lease ({self.lease_topic}); "
                    "--once runs only when none is active"
                )
        return False

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
        started = time.monotonic()
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
        try:
            follower.stop_following()
            followed = follower.restored.messages
            producer = open_site_producer(self.settings, on_failure)
            # Only now, with the previous producer fenced and its last transaction ended, is
            # the end of the topic the end of everything it will ever have published.
            follower.catch_up()
            active = make_active(producer, follower.restored)
            self._active = active
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
            active.run(term, once)
            lost = term.is_set() and not stop.is_set() and not failed
        except TransactionFailed as exc:
            if once:
                raise
            log.warning("%s: stepping down to standby: %s", self.instance, exc)
        finally:
            self._active = None
            self.metrics.active.labels(self.site).set(0)
            term.set()
            watcher.join()
        if self._error is not None:
            raise self._error
        if lost and once:
            raise LeaseUnavailable(f"lost the lease of site {self.site} during --once")
        if lost:
            log.warning("%s: lost the lease of site %s, standing by", self.instance, self.site)

    def _watch(self, lease: Lease, stop: threading.Event, term: threading.Event) -> None:
        """End the term when `stop` is set or the lease is lost."""
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
            if not held:
                term.set()


def _site_name(settings: Settings) -> str:
    if not settings.site.name:
        raise ConfigError("site.name: required (--site or CASCADE_SITE_NAME)")
    return settings.site.name
