"""The sim's notifications: what Nova, Cinder and Neutron put on the message bus when an object
changes, sent to a real RabbitMQ.

The envelope is oslo.messaging's (driver `messagingv2`): a JSON body `{"oslo.version": "2.0",
"oslo.message": "<JSON>"}` published to the service's control exchange (`nova`, `cinder`,
`neutron`, topic exchanges) with routing key `<topic>.info`, exactly as `oslo_messaging.Notifier`
sends it; it is published with py-amqp directly because the notifier's per-message overhead
cannot keep up with a storm (docs/performance.md), and from a process of its own (see
`SiteNotifier`). Nova sends versioned notifications
(`instance.update`, `instance.create.end`, `instance.delete.end`, payloads in the
`nova_object.*` wrapping) on `versioned_notifications`; Cinder (`volume.*`) and Neutron
(`port.*`, ...) send unversioned ones on `notifications`.

As in real clouds, not every change is notified: Neutron notifies API operations, not the status
an agent sets, so the status changes of networks, routers, floating IPs and of ports that belong
to the network node (DHCP, router interfaces) are silent; their creation and deletion are not.
`loss` drops that share of the other notifications at random. The site's lock is never held
while sending: changes are queued and the publishing process sends them, reconnecting and
sending again after the bus goes away, as oslo.messaging's notifier does (beyond QUEUE_LIMIT
queued notifications the newest are dropped and counted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing.connection
import queue
import random
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from connector.dev.sim.errors import SimError
from connector.dev.sim.model import (
    FLOATINGIP,
    NETWORK,
    PORT,
    ROUTER,
    SERVER,
    VOLUME,
    Port,
    Server,
    SimObject,
    Volume,
    iso_micro,
    iso_z,
)
from connector.dev.sim.store import Site

log = logging.getLogger(__name__)

#: Notifications waiting to be published at most; beyond it they are dropped and counted.
QUEUE_LIMIT = 200_000
#: Notifications published with one socket write at most (see `_HeldWrites`).
BATCH = 500
#: Seconds between reconnection attempts while the bus is down.
RECONNECT_DELAY = 1.0

#: Per kind: (control exchange, topic, publisher_id prefix) as the services send them.
ROUTES: dict[str, tuple[str, str, str]] = {
    SERVER: ("nova", "versioned_notifications", "nova-compute"),
    VOLUME: ("cinder", "notifications", "volume"),
    PORT: ("neutron", "notifications", "network"),
    NETWORK: ("neutron", "notifications", "network"),
    ROUTER: ("neutron", "notifications", "network"),
    FLOATINGIP: ("neutron", "notifications", "network"),
}

#: Nova's power_state numbers as its versioned payloads name them.
_POWER_STATES = {0: "pending", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed"}


@dataclass(frozen=True, slots=True)
class Event:
    """One change, captured under the site's lock: what the payload is built from."""

    action: str
    kind: str
    object_id: str
    old_status: str | None
    fields: dict[str, Any]
    at: float


def event_type(event: Event) -> str | None:
    """The service's event type for a change, or None when the service would not notify it."""
    kind, action, new = event.kind, event.action, event.fields.get("status")
    if kind == SERVER:
        return {"create": "instance.create.end", "delete": "instance.delete.end"}.get(
            action, "instance.update"
        )
    if kind == VOLUME:
        if action != "update":
            return f"volume.{action}.{'start' if action == 'create' else 'end'}"
        if event.old_status == "creating" and new == "available":
            return "volume.create.end"
        if new == "in-use":
            return "volume.attach.end"
        if event.old_status == "in-use" or new == "available":
            return "volume.detach.end"
        return "volume.update.end"
    if action == "update" and (
        kind != PORT or str(event.fields.get("device_owner", "")).startswith("network:")
    ):
        # Agents set these statuses; Neutron notifies API calls only.
        return None
    return f"{kind}.{action}.end"


def capture(action: str, obj: SimObject, old_status: str | None, now: float) -> Event:
    fields: dict[str, Any] = {
        "id": obj.id,
        "name": obj.name,
        "project_id": obj.project_id,
        "status": obj.status,
        "created": obj.created,
        "updated": obj.updated,
        "revision": obj.revision,
        **obj.details(),
    }
    if isinstance(obj, Server):
        fields["vm_state"] = obj.vm_state
    if isinstance(obj, Volume):
        fields["size"] = obj.size
    if isinstance(obj, Port):
        fields["mac_address"] = obj.mac_address
        fields["ip_address"] = obj.ip_address
    return Event(action, obj.kind, obj.id, old_status, fields, now)


def payload(event: Event, etype: str) -> dict[str, Any]:
    """The notification's payload, shaped as the service sends it (the fields that matter to a
    listener, not every field of every version)."""
    f = event.fields
    if event.kind == SERVER:
        return _nova_payload(event, etype)
    if event.kind == VOLUME:
        return {
            "tenant_id": f["project_id"],
            "user_id": None,
            "volume_id": f["id"],
            "display_name": f["name"],
            "size": f["size"],
            "status": "deleted" if event.action == "delete" else f["status"],
            "availability_zone": "nova",
            "created_at": iso_micro(f["created"]),
            "launched_at": iso_micro(f["created"]),
            "volume_type": None,
            "host": f["host"],
            "replication_status": None,
            "snapshot_id": None,
            "metadata": [],
            "volume_attachment": [
                {"instance_uuid": server, "attach_status": "attached"}
                for server in f["attachments"]
            ],
        }
    resource = {
        "id": f["id"],
        "name": f["name"],
        "tenant_id": f["project_id"],
        "project_id": f["project_id"],
        "status": f["status"],
        "revision_number": f["revision"],
        "created_at": iso_z(f["created"]),
        "updated_at": iso_z(f["updated"]),
        **{k: v for k, v in f.items() if k in ("admin_state_up", "device_id", "device_owner")},
    }
    if event.kind == PORT:
        resource.update(
            {
                "network_id": f["network_id"],
                "mac_address": f["mac_address"],
                "binding:host_id": f["binding_host"],
                "fixed_ips": [{"ip_address": f["ip_address"]}] if f["ip_address"] else [],
            }
        )
    if event.action == "delete":
        return {f"{event.kind}_id": f["id"], event.kind: resource}
    return {event.kind: resource}


def _nova_object(name: str, version: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "nova_object.name": name,
        "nova_object.namespace": "nova",
        "nova_object.version": version,
        "nova_object.data": data,
    }


def _nova_payload(event: Event, etype: str) -> dict[str, Any]:
    f = event.fields
    data: dict[str, Any] = {
        "uuid": f["id"],
        "display_name": f["name"],
        "tenant_id": f["project_id"],
        "host": f["host"],
        "node": f["host"],
        "state": f["vm_state"],
        "power_state": _POWER_STATES.get(f["power_state"], "nostate"),
        "task_state": f["task_state"],
        "created_at": iso_z(f["created"]),
        "updated_at": iso_z(f["updated"]),
        "deleted_at": iso_z(event.at) if event.action == "delete" else None,
        "availability_zone": "nova",
        "metadata": {},
    }
    if etype != "instance.update":
        name = "InstanceCreatePayload" if event.action == "create" else "InstanceActionPayload"
        return _nova_object(name, "1.10", data)
    old_state = (event.old_status or f["status"]).lower()
    data["state_update"] = _nova_object(
        "InstanceStateUpdatePayload",
        "1.0",
        {
            "old_state": old_state,
            "state": f["vm_state"],
            "old_task_state": None,
            "new_task_state": f["task_state"],
        },
    )
    return _nova_object("InstanceUpdatePayload", "2.0", data)


def envelope(event: Event, etype: str, host: str) -> bytes:
    """oslo.messaging's messagingv2 message, enveloped, as JSON bytes."""
    _, _, publisher = ROUTES[event.kind]
    message = {
        "message_id": str(uuid.uuid4()),
        "publisher_id": f"{publisher}:{host}",
        "event_type": etype,
        "priority": "INFO",
        "payload": payload(event, etype),
        "timestamp": datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        "_unique_id": uuid.uuid4().hex,
        "_context_request_id": f"req-{uuid.uuid4()}",
        "_context_project_id": event.fields["project_id"],
        "_context_is_admin": True,
    }
    body = {"oslo.version": "2.0", "oslo.message": json.dumps(message)}
    return json.dumps(body).encode()


@dataclass
class NotifyCounters:
    """What the notifier did since start."""

    sent: int = 0
    #: dropped on purpose (`loss`)
    lost: int = 0
    #: changes the service would not notify at all
    silent: int = 0
    #: dropped because the queue was full (the bus away for long)
    undelivered: int = 0


class SiteNotifier:
    """Observes a site's changes and has them published to `url`
    (`rabbit://USER:PASS@HOST:PORT/V`) by a process of its own.

    Not by a thread of the sim: building and publishing a notification is Python work, and the
    sim's process also renders listings; sharing one GIL, the notifications fell seconds behind
    the changes during a storm (docs/performance.md). In a real cloud each service notifies
    from its own processes."""

    def __init__(self, site: Site, url: str, loss: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= loss <= 1.0:
            raise SimError(f"notify loss must be between 0 and 1, got {loss}")
        self.site = site
        self.loss = loss
        self._target = _parse_url(url)
        self._rng = random.Random(seed)
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self.counters = NotifyCounters()
        #: called with (event type, event) for every notification sent (benchmarks)
        self.on_sent: Callable[[str, Event], None] | None = None
        self._thread = threading.Thread(target=self._run, name="sim-notify", daemon=True)
        self._stop = threading.Event()
        self._process: Any = None
        self._pipe: Any = None

    def __repr__(self) -> str:
        return f"SiteNotifier({self._target['host']}, loss={self.loss}, {self.counters})"

    def start(self) -> None:
        # Not multiprocessing's spawn: that imports the caller's __main__ again.
        ours, theirs = socket.socketpair()
        self._pipe = multiprocessing.connection.Connection(ours.detach())
        level = logging.getLogger().getEffectiveLevel()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(theirs.fileno()), str(level)],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self._pipe.send(self._target)  # the password never goes on a command line
        self.site.observers.append(self._observe)
        self._thread.start()

    def stop(self) -> None:
        if self._observe in self.site.observers:
            self.site.observers.remove(self._observe)
        self._stop.set()
        self._queue.put(None)
        self._thread.join(10)
        if self._process is None:
            return
        with contextlib.suppress(OSError):  # it is gone already
            self._pipe.send(None)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._pipe.close()

    def _observe(self, action: str, obj: SimObject, old_status: str | None, now: float) -> None:
        with self._lock:
            if self._pending >= QUEUE_LIMIT:
                self.counters.undelivered += 1
                return
            self._pending += 1
        self._queue.put(capture(action, obj, old_status, now))

    def _run(self) -> None:
        """Hands what was observed to the publishing process, a batch at a time: one batch
        travels while the next piles up."""
        while not self._stop.is_set():
            first = self._queue.get()
            batch = [first]
            while first is not None and len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                self._pending -= sum(event is not None for event in batch)
            outgoing = []
            for event in batch:
                if event is None:
                    return
                etype = event_type(event)
                if etype is None:
                    self.counters.silent += 1
                elif self.loss and self._rng.random() < self.loss:
                    self.counters.lost += 1
                else:
                    outgoing.append((etype, event))
            if outgoing and not self._hand_over(outgoing):
                return

    def _hand_over(self, batch: list[tuple[str, Event]]) -> bool:
        """Send `batch` and wait until it is published (the publisher keeps trying while the
        bus is away); False when the notifier stops first or the process is gone."""
        try:
            self._pipe.send(batch)
            while not self._pipe.poll(0.25):
                if self._stop.is_set():
                    return False
            self._pipe.recv()
        except (OSError, EOFError):
            log.error("notifications: the publishing process is gone; no more notifications")
            return False
        self.counters.sent += len(batch)
        if self.on_sent is not None:
            for etype, event in batch:
                self.on_sent(etype, event)
        return True


#: The publishing process's program: `publish_forever` on the inherited end of the pipe.
_PUBLISHER = (
    "import sys; from connector.dev.sim.notify import publish_forever; "
    "publish_forever(int(sys.argv[1]), int(sys.argv[2]))"
)


def publish_forever(fd: int, level: int) -> None:
    """The publishing process: the bus's address comes first, then each batch received is
    published and acknowledged; like oslo.messaging's notifier it keeps trying while the bus
    is away. Ends on None, or when the sim's end of the pipe closes."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipe = multiprocessing.connection.Connection(fd)
    publisher = None
    try:
        publisher = _Publisher(pipe.recv())
        while True:
            batch = pipe.recv()
            if batch is None:
                return
            while not publisher.publish(batch):
                # The next message can only be the stop: the sim waits for this batch.
                if pipe.poll(RECONNECT_DELAY):
                    return
            pipe.send(len(batch))
    except (EOFError, KeyboardInterrupt):
        return
    finally:
        if publisher is not None:
            publisher.close()


class _Publisher:
    """One connection to the bus, its frames written through `_HeldWrites`."""

    def __init__(self, target: dict[str, Any]) -> None:
        import amqp  # the notifications extra

        self._amqp = amqp
        self._target = target
        self._conn: Any = None
        self._channel: Any = None
        self._declared: set[str] = set()
        self._writes: _HeldWrites | None = None

    def publish(self, batch: list[tuple[str, Event]]) -> bool:
        """Publish `batch` with one socket write; False when the bus is away (a batch cut off
        is sent again whole: a notification twice is a hint twice)."""
        amqp = self._amqp
        try:
            if self._conn is None:
                conn = amqp.Connection(
                    **self._target, connect_timeout=2.0, frame_writer=self._frame_writer
                )
                conn.connect()
                self._conn, self._channel, self._declared = conn, conn.channel(), set()
            for exchange in {ROUTES[event.kind][0] for _, event in batch} - self._declared:
                # oslo.messaging's defaults: a topic exchange, neither durable nor auto-delete.
                self._channel.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
                self._declared.add(exchange)
            assert self._writes is not None
            self._writes.holding = True
            for etype, event in batch:
                exchange, topic, _ = ROUTES[event.kind]
                body = envelope(event, etype, str(event.fields.get("host") or "node-001"))
                message = amqp.Message(body, content_type="application/json")
                self._channel.basic_publish(message, exchange=exchange, routing_key=f"{topic}.info")
            self._writes.flush()
        except (OSError, amqp.exceptions.AMQPError) as exc:
            if self._conn is not None:
                log.warning("notifications: bus connection lost (%s); reconnecting", exc)
            self.close()
            return False
        return True

    def close(self) -> None:
        _close(self._conn)
        self._conn = self._channel = self._writes = None

    def _frame_writer(self, connection: Any, transport: Any) -> Any:
        """py-amqp's own frame writer (a documented `Connection` argument), writing through
        `_HeldWrites`."""
        self._writes = _HeldWrites(transport)
        return self._amqp.method_framing.frame_writer(connection, self._writes)


class _HeldWrites:
    """Where py-amqp writes a connection's frames: while `holding`, they pile up and go out in
    one write at `flush`, and `holding` ends. One socket write per batch, not per notification:
    each write gives up the GIL, and getting it back behind a busy thread takes up to a switch
    interval (5 ms)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held = bytearray()
        self.holding = False

    def write(self, data: bytes | memoryview) -> None:
        if self.holding:
            self._held += data  # a copy: py-amqp reuses the buffer `data` views
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = bytes(self._held), bytearray()
        self.holding = False
        if held:
            self._transport.write(held)


def _close(conn: Any) -> None:
    if conn is None:
        return
    try:
        conn.collect()
    except Exception:  # a dead connection may fail any way while being dropped
        log.debug("notifications: error while dropping a connection", exc_info=True)


def _parse_url(url: str) -> dict[str, Any]:
    """`rabbit://USER:PASS@HOST:PORT/VHOST` -> py-amqp connection keywords."""
    parts = urlsplit(url)
    if parts.scheme != "rabbit" or not parts.hostname:
        raise SimError(f"--notify expects rabbit://USER:PASS@HOST:PORT/, got {parts.scheme!r}://")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return {
        "host": f"{parts.hostname}:{parts.port or 5672}",
        "userid": unquote(parts.username or "guest"),
        "password": unquote(parts.password or "guest"),
        "virtual_host": vhost,
    }
