"""`cascade-connector produce`: one site's poller process, from settings to a clean exit.

Stands by until this process holds the site's lease (`election.py`: one publishing poller per site),
then ensures the site topic, rebuilds the publisher's state from it, connects to the site (one
openstacksdk connection per kind, each in its own thread so a failing service does not hold up
the others), publishes in transactions with a heartbeat every few seconds, and serves /metrics,
/readyz and /livez (a standby too, ready). SIGTERM and SIGINT stop the pollers, flush the
producer and return normally (exit 0). With `once`, every kind is resynced once, a heartbeat is
published, the producer flushed, and the call returns.

Nothing transient ends the process: Kafka trouble at start-up (no leader yet, brokers down,
timeouts) is retried with backoff while /readyz and the metrics say degraded (`startup.py`), and
the service proxies are made inside each kind's polls, under that kind's backoff. A stop ends the
process within 10 s in every state (STOP_JOIN, then STOP_FLUSH); what could not be delivered by
then is reported, and republished from the site by the next start (its restore does not hold it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import openstack
import openstack.config
import openstack.exceptions
from prometheus_client import CollectorRegistry

from connector.codecs import codec_from_settings
from connector.config import Settings, SiteSettings
from connector.errors import ConfigError, ConnectorError, KafkaError
from connector.kafka.producer import Producer
from connector.kafka.topics import TopicReport, ensure_site_topic, site_topic
from connector.ops.cleanup import cleanup_after
from connector.ops.heap import collect_less
from connector.ops.ops_server import OpsServer
from connector.ops.signals import stop_on_signals
from connector.site.clock import SiteClock
from connector.site.election import Election, instance_id, open_site_producer
from connector.site.heartbeat import Health
from connector.site.kinds import Kind, kinds_for
from connector.site.notifications import Notifications
from connector.site.poller import KindPoller
from connector.site.publisher import Publisher
from connector.site.restore import Restored, restore_from_topic
from connector.site.site_metrics import SiteMetrics
from connector.site.startup import Stopped, until_kafka_answers

log = logging.getLogger(__name__)

#: Attempts per kind in `--once` mode before the run counts as failed.
ONCE_ATTEMPTS = 5
#: Seconds from a stop (SIGTERM) to the end of the process stay under 10: the poller threads
#: get STOP_JOIN (a request in flight is abandoned), the final flush STOP_FLUSH.
STOP_JOIN = 3.0
STOP_FLUSH = 5.0
#: Seconds between commits of the open transaction (and deliveries served): a record waits this
#: long at most before readers see it. (Twice a second before notifications: their early polls
#: made the commit's wait a third of the delay left.)
COMMIT_EVERY = 0.2
#: Seconds the final flush of a `--once` run may take.
FLUSH_TIMEOUT = 60.0

T = TypeVar("T")


class SitePollFailed(ConnectorError):
    """A `--once` run could not poll every kind; the heartbeat says which and why."""


class SitePoller:
    """One site's poller, assembled: topic ensured, state restored, a KindPoller per kind.

    `run_site` drives it; tests and benchmarks call `cycle` to poll on their own schedule.
    Kafka trouble while starting is retried with backoff until it passes or `stop` is set
    (then Stopped); /healthz and the metrics can be served from `on_health` on, before it.
    """

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        metrics: SiteMetrics | None = None,
        producer: Producer | None = None,
        restored: Restored | None = None,
        stop: threading.Event | None = None,
        on_health: Callable[[SitePoller], None] | None = None,
    ) -> None:
        site = settings.site.name
        if not site:
            raise ConfigError("site.name: required (--site or CASCADE_SITE_NAME)")
        self.settings = settings
        self.instance = instance_id(settings.site)
        self._stop = stop or threading.Event()
        kinds = kinds_for(settings.site.kinds)
        codec = codec_from_settings(settings.kafka)
        self.topic = site_topic(settings.kafka.topic_prefix, site)
        _check_cloud(settings.site)
        self.registry = registry or CollectorRegistry()
        self.metrics = metrics or SiteMetrics(self.registry, site)
        self.health = Health(
            [k.name for k in kinds],
            self.metrics,
            settings.site.interval,
            settings.site.heartbeat_interval,
        )
        if on_health is not None:
            on_health(self)
        report: TopicReport = self._until_kafka_answers(
            "ensure the topic",
            lambda: ensure_site_topic(settings.kafka, site),
        )
        for line in report.lines():
            log.info("%s", line)
        # Opened before the restore: it fences the previous producer and ends its transaction,
        # so the restore reads everything that producer will ever have published.
        # `is None`, not `or`: a producer with nothing queued is falsy (it has a length), and
        # a second one opened here would fence the election's, whose failures end the term.
        self.producer = (
            producer
            if producer is not None
            else self._until_kafka_answers(
                "open the producer",
                lambda: open_site_producer(
                    settings, on_failure=lambda _failure: None, on_error=self._kafka_trouble
                ),
            )
        )
        if restored is None:
            names = [k.name for k in kinds]
            restored = self._until_kafka_answers(
                "restore", lambda: restore_from_topic(settings.kafka, self.topic, codec, names)
            )
        self.restored = restored
        self.health.kafka_ok()
        log.info(
            "restored %d key(s) and sequence %d from %d message(s) in %s",
            sum(len(fps) for fps in self.restored.fingerprints.values()),
            self.restored.last_sequence,
            self.restored.messages,
            self.topic,
        )
        self.publisher = Publisher(
            site,
            self.topic,
            self.producer,
            codec,
            self.metrics,
            self.health,
            self.restored.fingerprints,
            self.restored.last_sequence,
        )
        self.pollers = [self._kind_poller(kind) for kind in kinds]
        self.notifications = _notifications(settings, self.pollers, self.registry)

    def _kind_poller(self, kind: Kind) -> KindPoller:
        site_clock = SiteClock()
        offset = self.metrics.clock_offset.labels(self.metrics.site, kind.name)

        def connect() -> Any:
            proxy = _proxy(self.settings.site, kind, self.metrics, site_clock)
            offset.set(site_clock.offset)
            return proxy

        # The clouds.yaml entry was checked at the start (exit 2 when unusable); the service
        # proxy (Keystone, the catalog) is made in the first poll, under the kind's backoff.
        return KindPoller(
            kind,
            None,
            self.publisher,
            self.health,
            self.metrics,
            self.settings.site,
            connect=connect,
            site_clock=site_clock,
        )

    def _until_kafka_answers(self, what: str, call: Callable[[], T]) -> T:
        return until_kafka_answers(what, call, self._stop, self.settings.site, self._kafka_trouble)

    def _kafka_trouble(self, error: str) -> None:
        self.health.kafka_failed(error)

    def __repr__(self) -> str:
        return f"SitePoller({self.topic}, sequence={self.publisher.sequence}, {self.pollers})"

    def cycle(self, resync: bool) -> dict[str, str]:
        """Poll every kind once, one after the other (no retries): kind -> mode used. Raises
        the first site fault."""
        return {poller.kind.name: poller.poll(resync) for poller in self.pollers}

    def heartbeat(self) -> None:
        status, details = self.health.heartbeat()
        # Keys whose delivery failed wait for the next resync: the site is behind until then.
        unsent = sum(len(self.publisher.dirty_ids(p.kind.name)) for p in self.pollers)
        if unsent:
            status = "degraded"
            details = {**details, "unsent": unsent}
        if self.notifications is not None:
            details = {**details, **self.notifications.details()}
        self.publisher.heartbeat(status, {**details, "instance": self.instance})

    def flush(self, check_delivered: bool = True) -> None:
        """Wait for every delivery: KafkaError if a message is still queued or (with
        `check_delivered`) if any delivery failed."""
        self.producer.flush(FLUSH_TIMEOUT)
        if check_delivered and self.health.produce_errors:
            raise KafkaError(f"{self.health.produce_errors} message(s) could not be delivered")

    def run(self, stop: threading.Event, once: bool = False) -> None:
        """Poll until `stop` (or one resync of every kind with `once`), then flush. A `once`
        run fails when a delivery failed; a long run leaves those keys to the next resync.
        After a stop the flush is bounded (STOP_FLUSH), and what is left is reported."""

        def interrupt_on_stop() -> None:
            # A poller waiting for room in a full producer queue gives up at once on a stop.
            stop.wait()
            self.producer.interrupt()

        threading.Thread(target=interrupt_on_stop, name="stop-producer", daemon=True).start()

        def final_flush() -> None:
            if stop.is_set():
                self._flush_at_stop()
            else:
                self.flush(check_delivered=once)

        listening = self.notifications if not once else None
        if listening is not None:
            listening.start()
        stop_listening = [] if listening is None else [listening.stop]
        with cleanup_after(*stop_listening, final_flush):
            if once:
                _run_once(self.pollers, self, stop)
            else:
                _run_forever(self.pollers, self, stop, self.settings.site)

    def _flush_at_stop(self) -> None:
        """Deliver what can be within STOP_FLUSH; report the rest, which the next start
        republishes from the site (its restore does not hold it), and drop it."""
        try:
            self.producer.flush(STOP_FLUSH)
        except KafkaError:
            undelivered = len(self.producer)
            log.error(
                "stopping with %d message(s) undelivered (Kafka out of reach for %.0f s); the "
                "next start republishes them from the site",
                undelivered,
                STOP_FLUSH,
            )
            self.producer.purge()


def run_site(
    settings: Settings,
    once: bool = False,
    registry: CollectorRegistry | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the poller of `settings.site` until SIGTERM/SIGINT or `stop` (or one cycle with
    `once`), flushing before it returns. Raises ConfigError, KafkaError, or SitePollFailed (a
    `once` run that could not poll every kind)."""
    stop = stop or threading.Event()
    registry = registry or CollectorRegistry()
    # Signals are handled from the start: a stop during the start-up still exits 0.
    with stop_on_signals(stop.set), collect_less():
        election = Election(settings, registry)
        ops = None
        if settings.site.metrics_port is not None:
            ops = OpsServer(registry, election.ready, port=settings.site.metrics_port)
            ops.start()
            log.info("serving /metrics, /readyz and /livez on port %d", ops.port)
        try:
            with cleanup_after(*([] if ops is None else [ops.stop])):
                # Only the instance holding the site's lease polls and publishes (site/election.py).
                metrics = election.metrics
                election.run(
                    stop,
                    once,
                    lambda producer, restored: SitePoller(
                        settings, registry, metrics, producer, restored, stop
                    ),
                )
        except Stopped as exc:
            log.info("%s", exc)


def _notifications(
    settings: Settings, pollers: list[KindPoller], registry: CollectorRegistry
) -> Notifications | None:
    """The bus listener, its triggers given to the pollers; None without a bus URL."""
    if not settings.notifications.url:
        return None
    notifications = Notifications(
        settings.notifications, settings.site, [p.kind.name for p in pollers], registry
    )
    for poller in pollers:
        poller.trigger = notifications.triggers[poller.kind.name]
    return notifications


def _stop_all(servers: list[OpsServer]) -> None:
    for server in servers:
        server.stop()


def _check_cloud(site: SiteSettings) -> None:
    """ConfigError when the clouds.yaml entry cannot be used (no network involved)."""
    cloud = site.cloud or site.name
    try:
        openstack.config.OpenStackConfig().get_one(cloud=cloud)
    except openstack.exceptions.ConfigException as exc:
        raise ConfigError(f"site.cloud: cannot use clouds.yaml entry {cloud!r}: {exc}") from exc


def _proxy(site: SiteSettings, kind: Kind, metrics: SiteMetrics, site_clock: SiteClock) -> Any:
    """The service proxy of a fresh connection for `kind`, its requests counted and the site's
    clock read from their Date headers. Making it asks Keystone for the catalog: a site fault
    when Keystone is down, raised in the kind's poll."""
    cloud = site.cloud or site.name
    try:
        conn = openstack.connect(cloud=cloud, api_timeout=site.api_timeout)
    except openstack.exceptions.ConfigException as exc:
        raise ConfigError(f"site.cloud: cannot use clouds.yaml entry {cloud!r}: {exc}") from exc
    requests = metrics.requests.labels(metrics.site, kind.name)
    received = metrics.response_bytes.labels(metrics.site, kind.name)

    def count(response: Any, *_args: Any, **_kwargs: Any) -> None:
        # requests calls this as the headers arrive, `elapsed` after the request left, and
        # before it reads the body (which `content` does).
        arrived = time.time()
        site_clock.observe(
            response.headers.get("Date"), arrived, elapsed=response.elapsed.total_seconds()
        )
        requests.inc()
        received.inc(len(response.content))

    conn.session.session.hooks["response"].append(count)
    return getattr(conn, kind.service)


def _run_once(pollers: list[KindPoller], site: SitePoller, stop: threading.Event) -> None:
    results: dict[str, bool] = {}

    def resync(poller: KindPoller) -> None:
        results[poller.kind.name] = poller.run_once(stop, ONCE_ATTEMPTS)

    _join(_start(pollers, resync, stop), stop)
    site.heartbeat()
    failed = [name for name, ok in results.items() if not ok]
    if failed and not stop.is_set():
        _, details = site.health.snapshot()
        errors = "; ".join(f"{name}: {details.get(f'{name}.error')}" for name in failed)
        raise SitePollFailed(f"could not poll {', '.join(failed)}: {errors}")


def _run_forever(
    pollers: list[KindPoller], site: SitePoller, stop: threading.Event, settings: SiteSettings
) -> None:
    # Kind i of n polls i/n of an interval after the first: spread, not all at once.
    phases = {p.kind.name: i * settings.interval / len(pollers) for i, p in enumerate(pollers)}
    threads = _start(pollers, lambda poller: poller.run(stop, phases[poller.kind.name]), stop)
    next_heartbeat = time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_heartbeat:
            site.heartbeat()
            next_heartbeat += settings.heartbeat_interval
        # Delivery reports arrive only while someone polls the producer.
        site.producer.poll(0)
        stop.wait(min(COMMIT_EVERY, max(0.0, next_heartbeat - time.monotonic())))
    _join(threads, stop)


class _Crash:
    """The first unexpected exception of a poller thread, re-raised by the main thread."""

    def __init__(self) -> None:
        self.error: Exception | None = None


def _start(
    pollers: list[KindPoller], target: Callable[[KindPoller], None], stop: threading.Event
) -> tuple[list[threading.Thread], _Crash]:
    crash = _Crash()

    def guarded(poller: KindPoller) -> None:
        try:
            target(poller)
        except Exception as exc:
            # Not a site fault (those are retried): a bug or a broken record. Stop everything
            # and let the main thread raise it, rather than poll on with one kind dead.
            log.exception("poller of %s crashed", poller.kind.name)
            crash.error = crash.error or exc
            stop.set()

    threads = [
        threading.Thread(target=guarded, args=(p,), name=f"poll-{p.kind.name}", daemon=True)
        for p in pollers
    ]
    for thread in threads:
        thread.start()
    return threads, crash


def _join(started: tuple[list[threading.Thread], _Crash], stop: threading.Event) -> None:
    threads, crash = started
    for thread in threads:
        while thread.is_alive() and not stop.is_set():
            thread.join(0.2)
    # Once stopped, wait a bounded time, for all threads together, for a request in flight:
    # whatever it would have published is published after the restart, by the resync against
    # the restored state.
    deadline = time.monotonic() + STOP_JOIN
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if crash.error is not None:
        raise crash.error
