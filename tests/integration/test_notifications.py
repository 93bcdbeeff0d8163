"""Notifications as hints, against a real RabbitMQ (Debian's, started by LocalRabbit), the real
broker and the sim: a notified change is polled at once and other consumers still get their
copy; lost and never-sent notifications cost nothing but time; the bus going away and coming
back neither stops the poller nor the notifications for good."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp
import pytest
from prometheus_client import CollectorRegistry

from connector.dev.local_rabbit import LocalRabbit
from connector.dev.sim import RunningSim
from connector.dev.sim.behaviour import SERVER_STATES
from connector.dev.sim.model import Port, SimObject
from connector.site.runner import run_site
from tests.support import wait_for
from tests.support.sim import Topic, control, differences, latest, site_settings, truth

KINDS = "server,volume,port"


def listening(settings: Any, rabbit: LocalRabbit, listener: str = "pika") -> Any:
    """`settings` with the poller listening to `rabbit`'s notifications."""
    notifications = settings.notifications.model_copy(
        update={"url": rabbit.url, "listener": listener}
    )
    return settings.model_copy(update={"notifications": notifications})


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


class Poller:
    """`run_site` on a thread, stopped (and its error raised) on exit."""

    def __init__(self, settings: Any) -> None:
        self.registry = CollectorRegistry()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.site = settings.site.name
        self._thread = threading.Thread(target=self._run, args=(settings,), daemon=True)

    def _run(self, settings: Any) -> None:
        try:
            run_site(settings, registry=self.registry, stop=self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the poller did not stop"
        if self.error is not None:
            raise self.error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.registry, name, site=self.site, **labels)

    def wait_listening(self) -> None:
        wait_for(lambda: self.metric("cascade_site_notifications_up") == 1, 60, "the listener")


def flip(sim: RunningSim, obj: SimObject) -> str:
    """Change an object's status as the site would; returns the new status."""
    if obj.kind == "server":
        status = "SHUTOFF" if obj.status == "ACTIVE" else "ACTIVE"
        sim.site.update(obj, time.time(), **SERVER_STATES[status])
    elif obj.kind == "volume":
        status = "error" if obj.status != "error" else "available"
        sim.site.update(obj, time.time(), status=status)
    else:
        status = "DOWN" if obj.status == "ACTIVE" else "ACTIVE"
        sim.site.update(obj, time.time(), status=status)
    return status


def first(sim: RunningSim, kind: str, match: Callable[[SimObject], bool] = bool) -> SimObject:
    return next(o for o in sim.site.tables[kind].by_id.values() if match(o))


@pytest.mark.parametrize("listener", ["pika", "oslo.messaging"])
def test_a_notification_polls_its_kind_at_once_and_steals_from_no_one(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], rabbit: LocalRabbit, listener: str
) -> None:
    sim = open_sim(servers=30, volumes=30, ports=30, notify=rabbit.url)
    # Another consumer of Nova's notifications (as Ceilometer has), on the default queue.
    other = amqp.Connection(
        host=f"127.0.0.1:{rabbit.port}", userid=rabbit.user, password=rabbit.password
    )
    other.connect()
    channel = other.channel()
    channel.exchange_declare("nova", "topic", durable=False, auto_delete=False)
    channel.queue_declare("versioned_notifications.info", durable=False, auto_delete=False)
    channel.queue_bind("versioned_notifications.info", "nova", "versioned_notifications.info")
    # Interval polls every two minutes: whatever arrives sooner was polled because notified.
    settings = listening(
        site_settings(kafka_bootstrap, sim, kinds=KINDS, interval=120.0), rabbit, listener
    )
    topic = Topic(kafka_bootstrap, f"test.produce.{sim.cloud}")
    with Poller(settings) as poller:
        wait_for(lambda: poller.metric("cascade_site_sequence") >= 90, 60, "the first resync")
        poller.wait_listening()
        topic.new()
        targets = [
            first(sim, "server"),
            first(sim, "volume"),
            first(sim, "port", lambda p: isinstance(p, Port) and p.device_owner == "compute:nova"),
        ]
        changed_at = time.monotonic()
        expected = {(o.kind, o.id): flip(sim, o) for o in targets}
        arrived: dict[tuple[str, str], str | None] = {}

        def all_arrived() -> bool:
            arrived.update({k: r.status for k, r in latest(topic.new()).items()})
            return all(arrived.get(k) == status for k, status in expected.items())

        wait_for(all_arrived, 60, "the notified changes in the topic")
        assert time.monotonic() - changed_at < 60 < settings.site.interval
        for kind in ("server", "volume", "port"):
            assert poller.metric("cascade_site_notifications_received_total", kind=kind) >= 1
            assert poller.metric("cascade_site_notification_polls_total", kind=kind) >= 1
    # The other consumer got its own copy, in oslo.messaging's envelope, as Nova sends it.
    message = channel.basic_get("versioned_notifications.info", no_ack=True)
    other.close()
    assert message is not None, "the poller's pool took the other consumer's notification"
    body = json.loads(json.loads(message.body)["oslo.message"])
    assert body["event_type"] == "instance.update"
    assert body["publisher_id"].startswith("nova-compute:")
    assert body["payload"]["nova_object.data"]["uuid"] == targets[0].id


def test_lost_and_unsent_notifications_cost_time_not_changes(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], rabbit: LocalRabbit
) -> None:
    # Ports beyond the servers' belong to the network node: Neutron does not notify their status.
    sim = open_sim(servers=40, volumes=40, ports=80, notify=rabbit.url, notify_loss=0.3)
    # Deleted volumes and ports vanish from listings: the resync turns them into tombstones.
    settings = listening(
        site_settings(kafka_bootstrap, sim, kinds=KINDS, interval=3.0, resync_interval=5.0), rabbit
    )
    topic = Topic(kafka_bootstrap, f"test.produce.{sim.cloud}")
    with Poller(settings) as poller:
        poller.wait_listening()
        dhcp = first(sim, "port", lambda p: getattr(p, "device_owner", "") == "network:dhcp")
        flip(sim, dhcp)
        control(sim, "/_sim/churn", {"rate": 100, "seconds": 2})
        wait_for(lambda: sim.app.jobs.running() == 0, 60, "the churn")
        expected = truth(sim, KINDS)
        changes: list[Any] = []

        def converged() -> bool:
            changes.extend(topic.new())
            return not differences(changes, expected)

        wait_for(converged, 90, "the topic to equal the site")
        assert poller.alive
    counters = sim.notifier.counters if sim.notifier else None
    assert counters is not None
    assert counters.lost > 0, "some notifications were dropped"
    assert counters.silent > 0, "some changes were never notified"


def test_the_bus_going_away_stops_neither_polling_nor_for_good_the_notifications(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], rabbit: LocalRabbit
) -> None:
    sim = open_sim(servers=20, volumes=20, ports=20, notify=rabbit.url)
    settings = listening(site_settings(kafka_bootstrap, sim, kinds=KINDS, interval=2.0), rabbit)
    topic = Topic(kafka_bootstrap, f"test.produce.{sim.cloud}")
    server = first(sim, "server")
    with Poller(settings) as poller:
        poller.wait_listening()
        rabbit.stop()
        try:
            wait_for(lambda: poller.metric(UP) == 0, 30, "the bus to be seen down")
            status = flip(sim, server)

            def polled() -> bool:
                record = latest(topic.new()).get(("server", server.id))
                return record is not None and record.status == status

            wait_for(polled, 60, "the change, by polling alone")
            assert poller.alive
        finally:
            rabbit.start()
        wait_notified_again(poller, sim, server)
        assert poller.alive


UP = "cascade_site_notifications_up"


def wait_notified_again(poller: Poller, sim: RunningSim, server: SimObject) -> None:
    """Once the poller listens again, changes of `server` are notified to it again."""
    poller.wait_listening()
    received = poller.metric("cascade_site_notifications_received_total", kind="server")

    def notified_again() -> bool:
        flip(sim, server)
        time.sleep(0.5)
        return poller.metric("cascade_site_notifications_received_total", kind="server") > received

    wait_for(notified_again, 60, "notifications to resume")


def listener_pids() -> list[int]:
    """This process's children that run the notification listener."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                command = fh.read()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == os.getpid() and b"listen_forever" in command:
            pids.append(int(entry))
    return pids


def test_a_killed_listener_process_is_started_again_and_polling_never_stops(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], rabbit: LocalRabbit
) -> None:
    sim = open_sim(servers=20, volumes=20, ports=20, notify=rabbit.url)
    settings = listening(site_settings(kafka_bootstrap, sim, kinds=KINDS, interval=120.0), rabbit)
    server = first(sim, "server")
    with Poller(settings) as poller:
        poller.wait_listening()
        (pid,) = listener_pids()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: poller.metric(UP) == 0, 30, "the listener's end to be seen")
        wait_for(lambda: listener_pids() not in ([], [pid]), 30, "a new listener process")
        wait_notified_again(poller, sim, server)
        assert poller.alive
    assert listener_pids() == [], "the poller's stop ended its listener process"
