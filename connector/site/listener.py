"""The notification listener process: it reads the site's bus and tells the poller only how many
notifications of each kind arrived (connector.site.notifications starts it and acts on that).

It consumes the pool's own queue (`notifications.pool`), bound to the exchanges and topics the
services notify on, so it takes no message from Ceilometer or any other consumer. Two listeners
read that queue alike:

- **pika** (the default, `notifications.listener = "pika"`): RabbitMQ's own Python client,
  consuming the queue directly. A notification costs it about 70 microseconds of Python, the
  two JSON decodes of oslo.messaging's envelope included; oslo.messaging's listener costs about
  five times that (its dispatch, a deep copy of every message, one acknowledgement per message),
  which at a thousand notifications a second was a quarter of a two-core machine. It
  acknowledges each batch at once, reads `rabbit://` URLs as oslo.messaging does (several hosts
  separated by commas, a virtual host, `?ssl=1`), and uses the queue and exchanges as they are
  when they exist, else declares them as oslo.messaging's listener does.
- **oslo.messaging** (`notifications.listener = "oslo.messaging"`): its batch notification
  listener, for the `[oslo_messaging_rabbit]` options (TLS files, quorum queues) a deployment
  may depend on. Not yet for other transports (`kafka://`): `OsloListener` starts only once
  `_probe`, an AMQP login, succeeds, which such a URL never does.

Only the event type and the `timestamp` of a notification are read: polling stays the source
of what is published.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing.connection
import signal
import ssl
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from connector.errors import ConfigError
from connector.ops.logging import setup_logging

log = logging.getLogger(__name__)

#: (control exchange, topic) pairs the services notify on: Nova's versioned notifications,
#: Cinder's and Neutron's unversioned ones (the exchanges Ceilometer listens on too).
TARGETS: Sequence[tuple[str, str]] = (
    ("nova", "versioned_notifications"),
    ("nova", "notifications"),
    ("cinder", "notifications"),
    ("neutron", "notifications"),
)
#: The priorities a notification is routed by (`<topic>.<priority>`); all of them are hints.
PRIORITIES: Sequence[str] = ("audit", "debug", "info", "warn", "error", "critical", "sample")
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
LISTENERS = ("pika", "oslo.messaging")
#: Seconds a batch of notifications waits to fill before it is reported (and acknowledged).
BATCH_TIMEOUT = 0.05
#: oslo.messaging's listener: notifications handed to us at once at most.
BATCH_SIZE = 200
#: Unacknowledged notifications RabbitMQ may send ahead (acknowledged a batch at a time).
PREFETCH = 1000
#: Seconds between attempts to reach the bus (oslo.messaging: its longest reconnect back-off).
RECONNECT_MAX = 3
#: Seconds between probes of the bus (an AMQP handshake) while oslo.messaging's listener runs.
PROBE_INTERVAL = 5.0


def kind_of(event_type: str) -> str | None:
    """The kind an event type is about, or None."""
    for prefix, kind in EVENT_KINDS:
        if event_type.startswith(prefix):
            return kind
    return None


@dataclass(frozen=True)
class BusHost:
    host: str
    port: int
    user: str
    password: str


@dataclass(frozen=True)
class BusURL:
    """A `rabbit://` transport URL as oslo.messaging reads it: hosts tried in turn."""

    hosts: tuple[BusHost, ...]
    virtual_host: str
    ssl: bool
    ignored: tuple[str, ...]


def parse_rabbit_url(url: str) -> BusURL:
    """`rabbit://USER:PASS@HOST:PORT[,USER:PASS@HOST:PORT...]/[VHOST][?ssl=1]`; a ConfigError
    names what is wrong (never the password)."""
    parts = urlsplit(url)
    if parts.scheme != "rabbit":
        raise ConfigError(
            f"notifications.url: the pika listener reads rabbit:// URLs, not {parts.scheme}://; "
            "set notifications.listener = oslo.messaging for other transports"
        )
    hosts = []
    for netloc in parts.netloc.split(","):
        one = urlsplit(f"rabbit://{netloc}")
        try:
            port = one.port or 5672
        except ValueError:
            raise ConfigError(
                f"notifications.url: a host's port is not a number ({one.hostname})"
            ) from None
        if not one.hostname:
            raise ConfigError("notifications.url: a host is missing")
        user = unquote(one.username or "guest")
        hosts.append(BusHost(one.hostname, port, user, unquote(one.password or "guest")))
    query = parse_qs(parts.query)
    tls = query.pop("ssl", ["0"])[-1].lower() in ("1", "true", "yes")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return BusURL(tuple(hosts), vhost, tls, tuple(sorted(query)))


class Tally:
    """Notifications per kind since the last report, and the newest `timestamp` of each."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._newest: dict[str, str] = {}

    def add(self, event_type: object, stamp: object) -> None:
        kind = kind_of(str(event_type or "")) or "other"
        self._counts[kind] += 1
        # oslo.messaging's `str(utcnow())`: one format, so the latest sorts last
        if isinstance(stamp, str) and stamp > self._newest.get(kind, ""):
            self._newest[kind] = stamp

    def take(self) -> dict[str, tuple[int, float | None]]:
        """{kind: (count, newest stamp in epoch seconds or None)}, and start again."""
        taken = {kind: (n, _epoch(self._newest.get(kind))) for kind, n in self._counts.items()}
        self._counts.clear()
        self._newest.clear()
        return taken

    def __bool__(self) -> bool:
        return bool(self._counts)


def fields_of(body: bytes) -> tuple[object, object]:
    """(event type, timestamp) of a notification as oslo.messaging sends it (the message JSON,
    enveloped in `{"oslo.version", "oslo.message": "<JSON>"}` or not); (None, None) when the
    body is no such thing: it still counts, as a notification of no polled kind."""
    try:
        message = json.loads(body)
        if isinstance(message, dict) and isinstance(message.get("oslo.message"), str):
            message = json.loads(message["oslo.message"])
    except (ValueError, TypeError):
        return None, None
    if not isinstance(message, dict):
        return None, None
    return message.get("event_type"), message.get("timestamp")


class Report:
    """What the listener says to the poller through the pipe: ("up", bool) when the bus starts
    or stops answering, ("seen", {kind: (count, newest)}) per batch."""

    def __init__(self, pipe: multiprocessing.connection.Connection) -> None:
        self._pipe = pipe
        self._lock = threading.Lock()  # oslo.messaging's threads and its probe both send
        self._up: bool | None = None

    def send(self, message: tuple[str, Any]) -> None:
        with self._lock, contextlib.suppress(OSError):  # the poller is gone: `watch` stops us
            self._pipe.send(message)

    def up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            self.send(("up", up))

    def seen(self, tally: Tally) -> None:
        if tally:
            self.send(("seen", tally.take()))


def listen_forever(fd: int) -> None:
    """The listener process: the bus URL, the pool, the listener and how to log come first;
    then it reports through `Report`. Ends on None, or when the poller's end of the pipe
    closes."""
    # A Ctrl-C reaches the whole process group: the poller ends this process, in its own time.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pipe = multiprocessing.connection.Connection(fd)
    try:
        url, pool, listener, level, fmt = pipe.recv()
    except EOFError:
        return
    setup_logging(level, fmt)
    stop = threading.Event()

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            pipe.recv()  # None, or the end of the pipe: either way, stop
        stop.set()

    threading.Thread(target=watch, name="stop", daemon=True).start()
    report = Report(pipe)
    if listener == "oslo.messaging":
        import_oslo_messaging()
        OsloListener(url, pool, report).run(stop)
    else:
        PikaListener(url, pool, report).run(stop)


class PikaListener:
    """Consumes the pool's queue with pika; reports and acknowledges every BATCH_TIMEOUT."""

    def __init__(self, url: str, pool: str, report: Report) -> None:
        self.bus = parse_rabbit_url(url)
        self.pool = pool
        self.report = report
        self._tally = Tally()
        self._last_tag: int | None = None
        if self.bus.ignored:
            log.warning(
                "notifications: the pika listener ignores %s in the URL (oslo.messaging's "
                "listener reads them: notifications.listener = oslo.messaging)",
                ", ".join(self.bus.ignored),
            )

    def run(self, stop: threading.Event) -> None:
        import pika.exceptions

        failed: str | None = None
        while not stop.is_set():
            connection = None
            try:
                connection = self._connect()
                if failed is not None:
                    log.info("notifications: the bus answers again")
                failed = None
                self._consume(connection, stop)
            except (pika.exceptions.AMQPError, OSError) as exc:
                if failed is None:
                    log.warning("notifications: the bus does not answer: %s", describe(exc))
                failed = describe(exc)
            finally:
                self.report.up(False)
                # Unacknowledged notifications come again on the next connection; counting
                # some twice costs nothing (a hint twice).
                self._tally.take()
                self._last_tag = None
                if connection is not None:
                    with contextlib.suppress(Exception):  # a dead connection fails any way
                        connection.close()
            stop.wait(RECONNECT_MAX)

    def _connect(self) -> Any:
        import pika

        tls = ssl.create_default_context() if self.bus.ssl else None
        parameters = [
            pika.ConnectionParameters(
                host=h.host,
                port=h.port,
                virtual_host=self.bus.virtual_host,
                credentials=pika.PlainCredentials(h.user, h.password),
                ssl_options=pika.SSLOptions(tls, h.host) if tls is not None else None,
                connection_attempts=1,
                socket_timeout=2.0,
                stack_timeout=5.0,
            )
            for h in self.bus.hosts
        ]
        return pika.BlockingConnection(parameters)

    def _consume(self, connection: Any, stop: threading.Event) -> None:
        channel = self._declare(connection)
        channel.basic_qos(prefetch_count=PREFETCH)
        channel.basic_consume(self.pool, self._on_message)
        self.report.up(True)
        while not stop.is_set():
            connection.process_data_events(time_limit=BATCH_TIMEOUT)
            if self._last_tag is not None:
                self.report.seen(self._tally)  # reported before acknowledged: never lost
                channel.basic_ack(self._last_tag, multiple=True)
                self._last_tag = None

    def _on_message(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        self._tally.add(*fields_of(body))
        self._last_tag = method.delivery_tag

    def _declare(self, connection: Any) -> Any:
        """A channel, with the pool's queue bound to every target. The queue and exchanges are
        used as they are when they exist (a deployment may have made them durable, or quorum
        queues), else declared as oslo.messaging's listener declares them by default: topic
        exchanges and a queue, neither durable nor auto-deleted."""
        channel = _made_once(connection, connection.channel(), _queue(self.pool))
        for exchange, topic in TARGETS:
            channel = _made_once(connection, channel, _topic_exchange(exchange))
            for priority in PRIORITIES:
                channel.queue_bind(self.pool, exchange, routing_key=f"{topic}.{priority}")
        return channel


def _queue(name: str) -> Callable[[Any, bool], object]:
    return lambda channel, passive: channel.queue_declare(name, passive=passive)


def _topic_exchange(name: str) -> Callable[[Any, bool], object]:
    return lambda channel, passive: channel.exchange_declare(name, "topic", passive=passive)


def _made_once(connection: Any, channel: Any, declare: Callable[[Any, bool], object]) -> Any:
    """`declare(channel, passive=True)`; if the broker has no such thing (404, which closes the
    channel), `declare` it for real on a new channel. Returns the channel to go on with."""
    import pika.exceptions

    try:
        declare(channel, True)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
    channel = connection.channel()
    declare(channel, False)
    return channel


class OsloListener:
    """oslo.messaging's batch notification listener, kept running while a probe finds the bus
    answering (oslo.messaging reconnects on its own, but says nothing of it)."""

    def __init__(self, url: str, pool: str, report: Report) -> None:
        self.url = url
        self.pool = pool
        self.report = report
        self._listener: Any = None
        self._transport: Any = None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            answers = _probe(self.url)
            if answers and self._listener is None:
                try:
                    self._start_listener()
                except Exception as exc:  # whatever the driver raises: retried on the next probe
                    log.warning("notifications: listener did not start: %s", describe(exc))
                    self._listener = None
            self.report.up(answers and self._listener is not None)
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
            [OsloEndpoint(self.report)],
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
                log.warning("notifications: listener did not stop cleanly: %s", describe(exc))
        if self._transport is not None:
            self._transport.cleanup()
        self._listener = self._transport = None


class OsloEndpoint:
    """oslo.messaging's batch endpoint: one method per priority, all handled alike. Batches
    cost one dispatch for many messages, and one report to the poller."""

    def __init__(self, report: Report) -> None:
        self._report = report

    def info(self, messages: Sequence[Mapping[str, Any]]) -> None:
        tally = Tally()
        for m in messages:
            tally.add(m.get("event_type"), (m.get("metadata") or {}).get("timestamp"))
        self._report.seen(tally)

    warn = error = critical = audit = debug = sample = info


def import_oslo_messaging() -> bool:
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


def _probe(url: str) -> bool:
    """Whether the bus completes an AMQP login with the URL's credentials (its first host).
    py-amqp speaks `rabbit://` only: for another transport this says no."""
    import amqp

    try:
        bus = parse_rabbit_url(url)
    except ConfigError:
        return False
    first = bus.hosts[0]
    try:
        conn = amqp.Connection(
            host=f"{first.host}:{first.port}",
            userid=first.user,
            password=first.password,
            virtual_host=bus.virtual_host,
            connect_timeout=2.0,
        )
        conn.connect()
        conn.close()
        return True
    except (OSError, amqp.exceptions.AMQPError):
        return False


def describe(exc: BaseException) -> str:
    """An exception on one line, at most 300 characters, for a log line."""
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
