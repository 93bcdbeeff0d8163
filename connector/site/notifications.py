"""Notifications as hints: the site's message bus wakes a kind's poller early.

`produce --notifications URL` runs oslo.messaging's notification listener on the site's bus, in
its own pool (its own queue, so it takes no message from Ceilometer or any other consumer), on
the exchanges and topics the services notify on. An event is mapped to a kind by its type
(`instance.*` -> server, `volume.*` -> volume, `port.*` -> port, ...) and fires that kind's
`PollTrigger`, which starts an incremental poll shortly after. Nothing is read from the payload:
polling stays the only source of what is published, so a lost or never-sent notification costs
freshness, never correctness.

The listener runs in a process of its own, which sends the poller only how many notifications
of each kind arrived (a few small messages a second): oslo.messaging costs most of a millisecond
of Python per notification, and in the poller's process, sharing its GIL, a thousand a second
slowed the polls they asked for and fell behind themselves. The process is restarted if it dies.

The bus is optional at every moment: the listener starts in the background, oslo.messaging
reconnects on its own, and a probe reports whether the bus answers (`details()`, a gauge). While
it does not, the pollers poll on their intervals as without notifications. Needs the
`notifications` extra (oslo.messaging).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing.connection
import signal
import socket
import subprocess
import sys
import threading
import warnings
import weakref
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge

from connector.config import NotificationSettings, SiteSettings
from connector.errors import ConfigError
from connector.ops.logging import JsonFormatter, setup_logging
from connector.site.trigger import PollTrigger

log = logging.getLogger(__name__)

#: (control exchange, topic) pairs the services notify on: Nova's versioned notifications,
#: Cinder's and Neutron's unversioned ones (the exchanges Ceilometer listens on too).
TARGETS: Sequence[tuple[str, str]] = (
    ("nova", "versioned_notifications"),
    ("nova", "notifications"),
    ("cinder", "notifications"),
    ("neutron", "notifications"),
)
#: Event type prefix -> kind. Nova's legacy `compute.instance.*` and its versioned `instance.*`.
EVENT_KINDS: Sequence[tuple[str, str]] = (
    ("instance.", "server"),
    ("compute.instance.", "server"),
    ("volume.", "volume"),
    ("port.", "port"),
    ("floatingip.", "floatingip"),
    ("network.", "network"),
    ("router.", "router"),
)
#: Seconds between probes of the bus (an AMQP handshake) for the health report.
PROBE_INTERVAL = 5.0
#: Notifications handed to us at once, and the seconds a batch waits to fill.
BATCH_SIZE = 200
BATCH_TIMEOUT = 0.05
#: Longest pause, in seconds, between oslo.messaging's attempts to reconnect to the bus.
RECONNECT_MAX = 3


def kind_of(event_type: str) -> str | None:
    """The kind an event type is about, or None."""
    for prefix, kind in EVENT_KINDS:
        if event_type.startswith(prefix):
            return kind
    return None


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class NotificationMetrics:
    """The notification path's metrics, on the poller's registry."""

    def __init__(self, registry: CollectorRegistry, site: str) -> None:
        self.site = site
        per_kind = ["site", "kind"]
        self.received = Counter(
            "cascade_site_notifications_received_total",
            "Notifications received from the site's bus, by the kind they are about "
            "(kind=other: not a polled kind).",
            per_kind,
            registry=registry,
        )
        self.polls = Counter(
            "cascade_site_notification_polls_total",
            "Incremental polls started early because of notifications.",
            per_kind,
            registry=registry,
        )
        self.debounced = Counter(
            "cascade_site_notifications_debounced_total",
            "Notifications that arrived while a triggered poll was already pending.",
            per_kind,
            registry=registry,
        )
        self.stale = Counter(
            "cascade_site_notifications_stale_total",
            "Notifications about changes a finished poll had listed already (stamped before it "
            "began): no poll triggered.",
            per_kind,
            registry=registry,
        )
        self.storm_pauses = Counter(
            "cascade_site_notification_storm_pauses_total",
            "Times a triggered poll listed more than notifications.storm_share of its kind's "
            "objects and the kind's triggers paused for one interval.",
            per_kind,
            registry=registry,
        )
        self.up = Gauge(
            "cascade_site_notifications_up",
            "1 while the site's message bus answers, 0 while it does not (polling goes on).",
            ["site"],
            registry=registry,
        )


#: One set of metrics per registry: a poller that loses its lease and wins it again builds a new
#: listener on the same registry, which must not register the same metrics twice.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, NotificationMetrics] = (
    weakref.WeakKeyDictionary()
)


def _metrics_on(registry: CollectorRegistry, site: str) -> NotificationMetrics:
    if registry not in _METRICS:
        _METRICS[registry] = NotificationMetrics(registry, site)
    return _METRICS[registry]


class Notifications:
    """The listener process of one site's bus and the triggers of its kinds' pollers."""

    def __init__(
        self,
        settings: NotificationSettings,
        site: SiteSettings,
        kinds: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        if not settings.url:
            raise ConfigError("notifications.url: required to listen to notifications")
        if not AVAILABLE:
            raise ConfigError(
                "notifications.url: needs the notifications extra "
                "(pip install 'cascade-connector[notifications]')"
            )
        self.settings = settings
        self.url = settings.url
        self.pool = settings.pool or f"cascade-connector-{site.name}"
        self.metrics = _metrics_on(registry, site.name or "")
        self.metrics.up.labels(self.metrics.site).set(0)
        self.triggers: dict[str, PollTrigger] = {kind: self._trigger(kind, site) for kind in kinds}
        self._stop = threading.Event()
        self._up = False
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: multiprocessing.connection.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)

    def __repr__(self) -> str:
        state = "up" if self._up else "down"
        return f"Notifications({redacted(self.url)}, pool={self.pool}, {state})"

    def _trigger(self, kind: str, site: SiteSettings) -> PollTrigger:
        m = self.metrics
        labels = (m.site, kind)
        return PollTrigger(
            self.settings.debounce,
            site.interval,
            self.settings.storm_share,
            on_poll=m.polls.labels(*labels).inc,
            on_debounced=m.debounced.labels(*labels).inc,
            on_stale=m.stale.labels(*labels).inc,
            on_storm=m.storm_pauses.labels(*labels).inc,
        )

    def start(self) -> None:
        """Listen in the background; returns at once, whether the bus answers or not."""
        log.info("listening to notifications on %s in pool %s", redacted(self.url), self.pool)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)

    def details(self) -> dict[str, str]:
        """For the heartbeat: the notification path's state (the site's status is unaffected)."""
        return {"notifications": "up" if self._up else "degraded: the message bus does not answer"}

    def handle(self, kind: str, count: int = 1, newest: float | None = None) -> None:
        """`count` notifications about `kind`, the newest stamped `newest` (epoch seconds; None:
        not known): count them and fire its trigger."""
        trigger = self.triggers.get(kind)
        self.metrics.received.labels(self.metrics.site, kind if trigger else "other").inc(count)
        if trigger is not None:
            trigger.fire(newest, count)

    def _run(self) -> None:
        """Keep a listener process running and hand on what it reports, until `stop`."""
        while not self._stop.is_set():
            try:
                self._spawn()
                self._relay()
            except OSError as exc:
                log.warning("notifications: listener process failed: %s", _describe(exc))
            finally:
                self._end_process()
            self._set_up(False)
            if not self._stop.is_set():
                log.warning("notifications: the listener process ended; starting it again")
                self._stop.wait(PROBE_INTERVAL)

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        self._pipe = multiprocessing.connection.Connection(ours.detach())
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LISTENER, str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
        theirs.close()
        root = logging.getLogger()
        json = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
        fmt = "json" if json else "text"
        # The password never goes on a command line.
        self._pipe.send((self.url, self.pool, logging.getLevelName(root.level), fmt))

    def _relay(self) -> None:
        """What the listener process says, until it ends or `stop`."""
        assert self._pipe is not None
        while not self._stop.is_set():
            if not self._pipe.poll(0.25):
                continue
            try:
                what, value = self._pipe.recv()
            except EOFError:
                return
            if what == "up":
                self._set_up(bool(value))
            else:
                for kind, (count, newest) in value.items():
                    self.handle(kind, count, newest)

    def _end_process(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.send(None)
        if self._process is not None:
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._pipe is not None:
            self._pipe.close()
        self._process = self._pipe = None

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            if up:
                log.info("notifications: the message bus answers")
            else:
                log.warning("notifications: the message bus does not answer; polling goes on")
        self._up = up
        self.metrics.up.labels(self.metrics.site).set(1 if up else 0)


#: The listener process's program: `listen_forever` on the inherited end of the pipe.
_LISTENER = (
    "import sys; from connector.site.notifications import listen_forever; "
    "listen_forever(int(sys.argv[1]))"
)


def listen_forever(fd: int) -> None:
    """The listener process: the bus URL, the pool and how to log come first; then it reports
    ("up", bool) when the bus starts or stops answering, and ("seen", {kind: (count, newest)})
    per batch of notifications (`newest`: the latest `timestamp` in epoch seconds, or None).
    Ends on None, or when the poller's end of the pipe closes."""
    # A Ctrl-C reaches the whole process group: the poller ends this process, in its own time.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pipe = multiprocessing.connection.Connection(fd)
    try:
        url, pool, level, fmt = pipe.recv()
    except EOFError:
        return
    setup_logging(level, fmt)
    stop = threading.Event()

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            pipe.recv()  # None, or the end of the pipe: either way, stop
        stop.set()

    threading.Thread(target=watch, name="stop", daemon=True).start()
    _import_oslo_messaging()
    _Listener(url, pool, pipe).run(stop)


class _Listener:
    """In the listener process: probes the bus, keeps oslo.messaging's listener running while
    it answers, and reports to the poller through `pipe`."""

    def __init__(self, url: str, pool: str, pipe: multiprocessing.connection.Connection) -> None:
        self.url = url
        self.pool = pool
        self._pipe = pipe
        self._lock = threading.Lock()  # the endpoint's threads and the probe both send
        self._listener: Any = None
        self._transport: Any = None
        self._up: bool | None = None

    def send(self, message: tuple[str, Any]) -> None:
        with self._lock, contextlib.suppress(OSError):  # the poller is gone: `watch` stops us
            self._pipe.send(message)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            answers = _probe(self.url)
            if answers and self._listener is None:
                try:
                    self._start_listener()
                except Exception as exc:  # whatever the driver raises: retried on the next probe
                    log.warning("notifications: listener did not start: %s", _describe(exc))
                    self._listener = None
            up = answers and self._listener is not None
            if up != self._up:
                self._up = up
                self.send(("up", up))
            stop.wait(PROBE_INTERVAL)
        self._stop_listener()

    def _start_listener(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import oslo_messaging
            from oslo_config import cfg

        conf = cfg.ConfigOpts()
        conf([], project="cascade-connector", default_config_files=[], default_config_dirs=[])
        transport = oslo_messaging.get_notification_transport(conf, url=self.url)
        # The driver registered its options above. Reconnect within seconds of the bus coming
        # back (its default backs off to 30 s): a hint that arrives late is worth little.
        conf.set_override("rabbit_interval_max", RECONNECT_MAX, group="oslo_messaging_rabbit")
        targets = [oslo_messaging.Target(exchange=ex, topic=topic) for ex, topic in TARGETS]
        listener = oslo_messaging.get_batch_notification_listener(
            transport,
            targets,
            [_Endpoint(self)],
            executor="threading",
            pool=self.pool,
            batch_size=BATCH_SIZE,
            batch_timeout=BATCH_TIMEOUT,
        )
        listener.start()
        self._transport, self._listener = transport, listener

    def _stop_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.stop()
                self._listener.wait()
            except Exception as exc:  # shutting down: nothing left to save
                log.warning("notifications: listener did not stop cleanly: %s", _describe(exc))
        if self._transport is not None:
            self._transport.cleanup()
        self._listener = self._transport = None


class _Endpoint:
    """oslo.messaging's batch endpoint: one method per priority, all handled alike. Batches
    cost one dispatch for many messages, and one report to the poller."""

    def __init__(self, owner: _Listener) -> None:
        self._owner = owner

    def info(self, messages: Sequence[Mapping[str, Any]]) -> None:
        counts: Tally[str] = Tally()
        newest: dict[str, str] = {}
        for m in messages:
            kind = kind_of(str(m.get("event_type") or "")) or "other"
            counts[kind] += 1
            # oslo.messaging's `str(utcnow())`: one format, so the latest sorts last
            stamp = (m.get("metadata") or {}).get("timestamp")
            if isinstance(stamp, str) and stamp > newest.get(kind, ""):
                newest[kind] = stamp
        if counts:
            seen = {kind: (n, _epoch(newest.get(kind))) for kind, n in counts.items()}
            self._owner.send(("seen", seen))

    warn = error = critical = audit = debug = sample = info


def _import_oslo_messaging() -> bool:
    """Import oslo.messaging, with oslo.service on plain threads rather than eventlet (eventlet,
    which its dependencies import when it is installed, leaves the thread that first imports it
    impossible to join: the listener process imports it in its main thread); False if the extra
    is not installed."""
    try:
        with warnings.catch_warnings():
            # Importing eventlet (futurist does, if it is installed) warns that it is deprecated.
            warnings.simplefilter("ignore")
            from oslo_service import backend

            try:
                backend.init_backend(backend.BackendType.THREADING)
            except backend.exceptions.BackendAlreadySelected as exc:
                log.warning("notifications: %s; listening anyway", exc)
            import oslo_messaging  # noqa: F401
    except ImportError:
        return False
    return True


#: Whether the notifications extra is installed. (It is imported in the listener process only.)
AVAILABLE = importlib.util.find_spec("oslo_messaging") is not None


def _probe(url: str) -> bool:
    """Whether the bus completes an AMQP login with the URL's credentials."""
    import amqp

    parts = urlsplit(url.split(",")[0])
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    try:
        conn = amqp.Connection(
            host=f"{parts.hostname}:{parts.port or 5672}",
            userid=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            virtual_host=vhost,
            connect_timeout=2.0,
        )
        conn.connect()
        conn.close()
        return True
    except (OSError, amqp.exceptions.AMQPError):
        return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def _epoch(stamp: str | None) -> float | None:
    """A notification's `timestamp` (`2026-12-02 01:02:03.456789`, UTC) as epoch seconds; None
    when there is none or it does not parse (the notification then counts as news)."""
    if stamp is None:
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return (parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed).timestamp()
