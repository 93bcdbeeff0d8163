"""Notifications as hints: the site's message bus wakes a kind's poller early.

`produce --notifications URL` listens to the site's bus in its own pool (its own queue, so it
takes no message from Ceilometer or any other consumer), on the exchanges and topics the
services notify on. An event is mapped to a kind by its type (`instance.*` -> server,
`volume.*` -> volume, `port.*` -> port, ...) and fires that kind's `PollTrigger`, which starts
an incremental poll shortly after. Nothing is read from the payload: polling stays the only
source of what is published, so a lost or never-sent notification costs freshness, never
correctness.

The listener (connector.site.listener: pika by default, or oslo.messaging's) runs in a process
of its own, which sends the poller only how many notifications of each kind arrived (a few
small messages a second): in the poller's process, sharing its GIL, a thousand notifications a
second slowed the polls they asked for. The process is restarted if it dies.

The bus is optional at every moment: the listener connects in the background and again after
the bus goes away, and reports whether it answers (`details()`, a gauge). While it does not,
the pollers poll on their intervals as without notifications. Needs the `notifications` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing.connection
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge

from connector.config import NotificationSettings, SiteSettings
from connector.errors import ConfigError
from connector.ops.logging import JsonFormatter
from connector.site.listener import describe, parse_rabbit_url
from connector.site.trigger import PollTrigger

log = logging.getLogger(__name__)


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
        if not _available(settings.listener):
            raise ConfigError(
                f"notifications.listener: {settings.listener} needs the notifications extra "
                "(pip install 'cascade-connector[notifications]')"
            )
        if settings.listener == "pika":
            parse_rabbit_url(settings.url)  # a ConfigError now, not in the listener process
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
                log.warning("notifications: listener process failed: %s", describe(exc))
            finally:
                self._end_process()
            self._set_up(False)
            if not self._stop.is_set():
                log.warning("notifications: the listener process ended; starting it again")
                self._stop.wait(RESTART_AFTER)

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
        self._pipe.send(
            (self.url, self.pool, self.settings.listener, logging.getLevelName(root.level), fmt)
        )

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
    "import sys; from connector.site.listener import listen_forever; "
    "listen_forever(int(sys.argv[1]))"
)
#: Seconds before a listener process that ended is started again.
RESTART_AFTER = 5.0
#: The library each listener needs (the notifications extra brings both).
_NEEDS = {"pika": "pika", "oslo.messaging": "oslo_messaging"}


def _available(listener: str) -> bool:
    return importlib.util.find_spec(_NEEDS[listener]) is not None
