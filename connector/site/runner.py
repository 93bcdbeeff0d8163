"""`cascade-connector produce`: one site's poller process, from settings to a clean exit.

Ensures the site topic, stands by until this process holds the site's lease (`election.py`: one
publishing poller per site, which opens the producer and rebuilds the publisher's state from the
topic), then builds the poller on what the election made, connects to the site (one
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
from functools import partial
from typing import Any

import keystoneauth1.exceptions
import openstack
import openstack.config
import openstack.exceptions
import os_service_types
from prometheus_client import CollectorRegistry

from connector.config import Settings, SiteSettings
from connector.errors import ConfigError, ConnectorError, KafkaError
from connector.kafka.topics import site_topic
from connector.kafka.transactions import ProducerFenced, TransactionalProducer, TransactionFailed
from connector.ops.cleanup import cleanup_after
from connector.ops.heap import collect_less, limit_malloc_arenas
from connector.ops.ops_server import OpsServer
from connector.ops.signals import stop_on_signals
from connector.records.codec import Codec
from connector.site.clock import SiteClock
from connector.site.election import Election, instance_id
from connector.site.heartbeat import Health
from connector.site.kinds import Kind, kinds_for
from connector.site.notifications import Notifications
from connector.site.poller import KindPoller
from connector.site.publisher import Publisher
from connector.site.restore import Restored
from connector.site.site_metrics import SiteMetrics
from connector.site.startup import Stopped

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


class SitePollFailed(ConnectorError):
    """A `--once` run could not poll every kind; the heartbeat says which and why."""


class SitePoller:
    """One site's poller, assembled on what its election's term made: the producer (which
    fenced the previous one) and the state restored from the site topic; a KindPoller per kind.

    `run_site` drives it; tests and benchmarks make one with `open_site_poller` and call
    `cycle` to poll on their own schedule.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: SiteMetrics,
        codec: Codec,
        producer: TransactionalProducer,
        restored: Restored,
    ) -> None:
        self.settings = settings
        self.instance = instance_id(settings.site)
        self.metrics = metrics
        self.producer = producer
        self.restored = restored
        kinds = kinds_for(settings.site.kinds)
        self.topic = site_topic(settings.kafka.topic_prefix, metrics.site)
        self.health = Health(
            [k.name for k in kinds],
            metrics,
            settings.site.interval,
            settings.site.heartbeat_interval,
        )
        log.info(
            "restored %d key(s) and sequence %d from %d message(s) in %s",
            sum(len(fps) for fps in restored.fingerprints.values()),
            restored.last_sequence,
            restored.messages,
            self.topic,
        )
        self.publisher = Publisher(
            metrics.site,
            self.topic,
            producer,
            codec,
            metrics,
            self.health,
            restored.fingerprints,
            restored.last_sequence,
        )
        self.pollers = [self._kind_poller(kind) for kind in kinds]
        self.notifications = _notifications(settings, self.pollers, metrics.registry)

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
        except ProducerFenced:
            # Said once by the producer; what it held is the successor's to publish.
            self.producer.purge()
        except TransactionFailed as exc:
            # Kafka out of reach until the flush's deadline, or a send met the commit the stop
            # interrupted: nothing of the open transaction is published (its messages may have
            # left librdkafka's queue already, so no count).
            log.error(
                "stopping with the open transaction's messages undelivered (%s); the next start "
                "republishes them from the site",
                exc,
            )
            self.producer.purge()
        except KafkaError as exc:
            log.error(
                "stopping with %d message(s) undelivered (%s); the next start republishes "
                "them from the site",
                len(self.producer),
                exc,
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
    limit_malloc_arenas()  # before any thread starts
    # Before Kafka is asked anything: a standby with an entry it cannot use would otherwise
    # find out only when it takes over, and a start with Kafka away would never find out.
    _check_cloud(settings.site)
    stop = stop or threading.Event()
    registry = registry or CollectorRegistry()
    # Signals are handled from the start: a stop during the start-up still exits 0.
    with stop_on_signals(stop.set), collect_less():
        election = Election(settings, registry)
        ops = None
        if settings.site.metrics_port is not None:
            ops = OpsServer(
                registry,
                election.ready,
                host=settings.site.metrics_host,
                port=settings.site.metrics_port,
            )
            ops.start()
            log.info("serving /metrics, /readyz and /livez on port %d (%s)", ops.port, ops.host)
        try:
            with cleanup_after(*([] if ops is None else [ops.stop])):
                # Only the instance holding the site's lease polls and publishes (site/election.py).
                election.run(stop, once, partial(_site_poller, settings, election))
        except Stopped as exc:
            log.info("%s", exc)


def open_site_poller(settings: Settings, registry: CollectorRegistry | None = None) -> SitePoller:
    """The poller of `settings.site` without the election: the start-up of an active term (the
    topics ensured, the producer opened, the site topic read) done at once, for tests and
    benchmarks, which poll on their own schedule. Its metrics go to `registry`."""
    _check_cloud(settings.site)
    stop = threading.Event()  # never set: Kafka trouble at start-up is waited out, retried
    election = Election(settings, registry or CollectorRegistry())
    election.start_up(stop)
    producer, restored = election.take_over(stop)
    return _site_poller(settings, election, producer, restored)


def _site_poller(
    settings: Settings, election: Election, producer: TransactionalProducer, restored: Restored
) -> SitePoller:
    """A term's poller, reporting into the election's metrics (made once for every term)."""
    return SitePoller(settings, election.metrics, election.codec, producer, restored)


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


#: The interfaces keystoneauth can choose an endpoint by (and their old v2 spellings).
INTERFACES = frozenset({"public", "internal", "admin", "publicURL", "internalURL", "adminURL"})


def _check_cloud(site: SiteSettings) -> None:
    """ConfigError when the clouds.yaml entry cannot be used (no network involved): an unknown
    cloud, an unknown auth type, missing auth options, an interface that does not exist."""
    cloud = site.cloud or site.name
    try:
        region = openstack.config.OpenStackConfig().get_one(cloud=cloud)
    except (
        openstack.exceptions.ConfigException,
        keystoneauth1.exceptions.AuthPluginException,
    ) as exc:
        raise ConfigError(f"site.cloud: cannot use clouds.yaml entry {cloud!r}: {exc}") from exc
    for key, value in region.config.items():
        if (key == "interface" or key.endswith("_interface")) and value not in INTERFACES:
            raise ConfigError(
                f"site.cloud: clouds.yaml entry {cloud!r}: {key} {value!r} is not an interface "
                f"(one of {', '.join(sorted(INTERFACES))})"
            )


def _proxy(site: SiteSettings, kind: Kind, metrics: SiteMetrics, site_clock: SiteClock) -> Any:
    """The service proxy of a fresh connection for `kind`, its requests counted, the site's
    clock read from their Date headers, and a token the site refuses logged. Making it asks
    Keystone for the catalog: a site fault when Keystone is down, raised in the kind's poll; a
    ConfigError when the catalog has no endpoint for the entry's region and interface, or none
    of a version the entry asks for (keystoneauth says "Programming error choosing an
    endpoint", a ValueError)."""
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
        if response.status_code == 401 and "X-Auth-Token" in response.request.headers:
            # keystoneauth answers a refused token by authenticating again and retrying the
            # request once (its Session.request); a failure after that fails the poll.
            log.warning(
                "%s: the site refused the poller's token (401 from %s %s: revoked or expired); "
                "authenticating again with clouds.yaml entry %r",
                kind.name,
                response.request.method,
                response.url,
                cloud,
            )

    conn.session.session.hooks["response"].append(count)
    try:
        proxy = getattr(conn, kind.service)
        endpoint = proxy.get_endpoint()
    except (ValueError, openstack.exceptions.NotSupported) as exc:
        raise ConfigError(_no_endpoint(cloud, conn, kind, exc)) from exc
    if not endpoint:
        raise ConfigError(_no_endpoint(cloud, conn, kind, None))
    return proxy


def _no_endpoint(cloud: str | None, conn: Any, kind: Kind, exc: Exception | None) -> str:
    """Why the catalog gives `kind` no endpoint, naming the entry's choice and what it offers."""
    config = conn.config
    service_type = config.get_service_type(kind.service.replace("_", "-"))
    region = config.get_region_name(service_type)
    interface = config.get_interface(service_type)
    offered = set()
    types = set(os_service_types.ServiceTypes().get_all_types(service_type))
    for entry in conn.session.auth.get_access(conn.session).service_catalog.catalog:
        if entry.get("type") in types:
            for endpoint in entry.get("endpoints", ()):
                offered.add(f"{endpoint.get('region_id')}/{endpoint.get('interface')}")
    if isinstance(exc, openstack.exceptions.NotSupported):
        why = str(exc)
    else:
        why = f"the catalog has no {service_type} endpoint in region {region!r} at interface "
        why += f"{interface!r}"
    listed = ", ".join(sorted(offered)) or "none"
    return (
        f"site.cloud: clouds.yaml entry {cloud!r} ({kind.name}): {why}; the catalog offers "
        f"(region/interface): {listed}"
    )


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
        except ConfigError as exc:
            # The settings do not fit the site (no endpoint for the region): no traceback,
            # the main thread raises it and the process exits 2 naming it.
            log.error("poller of %s stopped: %s", poller.kind.name, exc)
            crash.error = crash.error or exc
            stop.set()
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
