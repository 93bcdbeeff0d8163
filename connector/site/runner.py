"""`cascade-connector produce`: one site's poller process, from settings to a clean exit.

Ensures the site topic, rebuilds the publisher's state from it, connects to the site (one
openstacksdk connection per kind, each in its own thread so a failing service does not hold up
the others), publishes a heartbeat every few seconds, and serves /metrics, /readyz and /livez.
SIGTERM and SIGINT stop the pollers, flush the producer and return normally (exit 0). With
`once`, every kind is resynced once, a heartbeat is published, the producer flushed, and the call
returns.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import openstack
import openstack.exceptions
from prometheus_client import CollectorRegistry

from connector.codecs import codec_from_settings
from connector.config import Settings, SiteSettings
from connector.errors import ConfigError, ConnectorError, KafkaError
from connector.kafka.producer import Producer
from connector.kafka.topics import ensure_site_topic
from connector.ops.cleanup import cleanup_after
from connector.ops.metrics import OpsServer
from connector.ops.signals import stop_on_signals
from connector.site.heartbeat import Health
from connector.site.kinds import Kind, kinds_for
from connector.site.metrics import SiteMetrics
from connector.site.poller import KindPoller
from connector.site.publisher import Publisher
from connector.site.restore import restore_from_topic

log = logging.getLogger(__name__)

#: Attempts per kind in `--once` mode before the run counts as failed.
ONCE_ATTEMPTS = 5
#: Seconds to wait for the poller threads after a stop, and for the final flush.
SHUTDOWN_JOIN = 10.0
FLUSH_TIMEOUT = 60.0
#: Allocations between runs of the collector's youngest generation (Python's default: 700).
#: A listing page is tens of thousands of small dicts and strings, none in a cycle; at the
#: default the collector runs dozens of times per page and rescans what is still alive, about a
#: fifth of a full resync's CPU (bench/poll_cost.py).
GC_THRESHOLD = 10_000


class SitePollFailed(ConnectorError):
    """A `--once` run could not poll every kind; the heartbeat says which and why."""


class SitePoller:
    """One site's poller, assembled: topic ensured, state restored, a KindPoller per kind.

    `run_site` drives it; tests and benchmarks call `cycle` to poll on their own schedule.
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        site = settings.site.name
        if not site:
            raise ConfigError("site.name: required (--site or CASCADE_SITE_NAME)")
        self.settings = settings
        kinds = kinds_for(settings.site.kinds)
        codec = codec_from_settings(settings.kafka)
        report = ensure_site_topic(settings.kafka, site)
        for line in report.lines():
            log.info("%s", line)
        self.topic = report.topic
        self.restored = restore_from_topic(
            settings.kafka, self.topic, codec, [k.name for k in kinds]
        )
        log.info(
            "restored %d key(s) and sequence %d from %d message(s) in %s",
            sum(len(fps) for fps in self.restored.fingerprints.values()),
            self.restored.last_sequence,
            self.restored.messages,
            self.topic,
        )
        self.registry = registry or CollectorRegistry()
        self.metrics = SiteMetrics(self.registry, site)
        self.health = Health([k.name for k in kinds], self.metrics)
        self.producer = Producer(settings.kafka)
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
        self.pollers = [
            KindPoller(
                kind,
                _proxy(settings.site, kind, self.metrics),
                self.publisher,
                self.health,
                self.metrics,
                settings.site,
            )
            for kind in kinds
        ]

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
        self.publisher.heartbeat(status, details)

    def flush(self, check_delivered: bool = True) -> None:
        """Wait for every delivery: KafkaError if a message is still queued or (with
        `check_delivered`) if any delivery failed."""
        self.producer.flush(FLUSH_TIMEOUT)
        if check_delivered and self.health.produce_errors:
            raise KafkaError(f"{self.health.produce_errors} message(s) could not be delivered")

    def run(self, stop: threading.Event, once: bool = False) -> None:
        """Poll until `stop` (or one resync of every kind with `once`), then flush. A `once`
        run fails when a delivery failed; a long run leaves those keys to the next resync."""
        with cleanup_after(lambda: self.flush(check_delivered=once)):
            if once:
                _run_once(self.pollers, self, stop)
            else:
                _run_forever(self.pollers, self, stop, self.settings.site)


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
    # Signals are handled from the start: a stop during the restore still flushes and exits 0.
    with stop_on_signals(stop.set), fewer_collections():
        poller = SitePoller(settings, registry)
        ops = None
        if settings.site.metrics_port is not None:
            health = poller.health.snapshot
            ops = OpsServer(poller.registry, health, port=settings.site.metrics_port)
            ops.start()
            log.info("serving /metrics, /readyz and /livez on port %d", ops.port)
        with cleanup_after(*([] if ops is None else [ops.stop])):
            poller.run(stop, once)


def _proxy(site: SiteSettings, kind: Kind, metrics: SiteMetrics) -> Any:
    """The service proxy of a fresh connection for `kind`, its requests counted."""
    cloud = site.cloud or site.name
    try:
        conn = openstack.connect(cloud=cloud, api_timeout=site.api_timeout)
    except openstack.exceptions.ConfigException as exc:
        raise ConfigError(f"site.cloud: cannot use clouds.yaml entry {cloud!r}: {exc}") from exc
    requests = metrics.requests.labels(metrics.site, kind.name)
    received = metrics.response_bytes.labels(metrics.site, kind.name)

    def count(response: Any, *_args: Any, **_kwargs: Any) -> None:
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
    threads = _start(pollers, lambda poller: poller.run(stop), stop)
    next_heartbeat = time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_heartbeat:
            site.heartbeat()
            next_heartbeat += settings.heartbeat_interval
        # Delivery reports arrive only while someone polls the producer.
        site.producer.poll(0)
        stop.wait(min(0.5, max(0.0, next_heartbeat - time.monotonic())))
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
        # Once stopped, wait a bounded time for a request in flight: whatever it would have
        # published is published after the restart, by the resync against the restored state.
        thread.join(SHUTDOWN_JOIN)
    if crash.error is not None:
        raise crash.error


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the garbage collector's youngest generation every GC_THRESHOLD allocations instead
    of Python's 700, for the duration; the thresholds are restored after."""
    previous = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
