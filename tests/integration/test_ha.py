"""Two `cascade-connector produce` processes for one site, as an operator runs them for high
availability: exactly one publishes; a killed active is replaced within 30 s by a standby that
republishes nothing unchanged; a paused active that comes back after a take-over is fenced and
stands by. Real processes, the real broker, a simulated site; every process is stopped by its
pid, a paused one resumed first, whatever the outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

import pytest

from connector.config import Settings, load_settings
from connector.dev import free_port
from connector.dev.demo.observe import SinkReader, compare, metric_total
from connector.dev.demo.observe import truth as site_truth
from connector.dev.sim import RunningSim
from connector.kafka.lease import Lease
from connector.kafka.reader import TopicReader
from connector.kafka.topics import ensure_lease_topic, lease_topic
from connector.records.codec import Codec
from connector.records.messages import change_from_message, instance_of
from connector.records.model import Change, StatusRecord
from tests.support import wait_for
from tests.support.kafka import end_offsets, position
from tests.support.sim import control, differences, truth
from tests.support.top import consumer_running

KINDS = "server,volume,port"
#: The lease timeout the pollers run with: the broker's default minimum, for a quick failover.
LEASE_TIMEOUT = 6.0


@dataclass(frozen=True)
class Published:
    """One committed message of the site topic: where it is, who wrote it, what it says."""

    partition: int
    offset: int
    instance: str | None
    change: Change

    @property
    def heartbeat(self) -> bool:
        return isinstance(self.change, StatusRecord) and self.change.is_heartbeat


class Poller:
    """One `produce` process of the test's site, its log in a file, /metrics on its own port."""

    def __init__(self, instance: str, command: list[str], env: dict[str, str], logs: Path):
        self.instance = instance
        self.port = free_port()
        self.log = logs / f"poller-{instance}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "--instance-id", instance, "--metrics-port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def __repr__(self) -> str:
        return f"Poller({self.instance}, pid {self.proc.pid}, exit {self.proc.poll()})"

    def metric(self, name: str, **labels: str) -> float | None:
        """A metric's value from /metrics; None when the process does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (URLError, OSError):
            return None
        return metric_total(text, name, **labels)

    def active(self) -> float | None:
        return self.metric("cascade_site_active")

    def readyz(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except HTTPError as error:  # 503: not ready, with the reasons
            return error.code, json.loads(error.read())

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def kill(self) -> None:
        """Resume (a paused process ignores everything but SIGKILL) and kill, by pid."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def pollers(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], tmp_path: Path
) -> Iterator[Callable[..., tuple[RunningSim, Settings, list[Poller]]]]:
    """`pollers("a", "b")`: a small simulated site and one `produce` process per instance id
    (`before(settings)` is called first, when given)."""
    started: list[Poller] = []

    def start(
        *instances: str, before: Callable[[Settings], None] | None = None
    ) -> tuple[RunningSim, Settings, list[Poller]]:
        sim = open_sim(servers=30, volumes=30, ports=30)
        prefix = f"test.ha.{sim.cloud}"
        settings = load_settings(
            flags={
                "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": prefix},
                "site": {"name": sim.cloud, "kinds": KINDS},
            }
        )
        command = [sys.executable, "-m", "connector", "produce", "--bootstrap", kafka_bootstrap]
        command += [
            "--site",
            sim.cloud,
            "--kinds",
            KINDS,
            "--interval",
            "0.5",
            "--resync-interval",
            "2",
        ]
        command += ["--lease-timeout", str(LEASE_TIMEOUT)]
        env = {
            **os.environ,
            "CASCADE_KAFKA_TOPIC_PREFIX": prefix,
            "CASCADE_SITE_HEARTBEAT_INTERVAL": "1",
        }
        if before is not None:
            before(settings)
        for instance in instances:
            started.append(Poller(instance, command, env, tmp_path))
        return sim, settings, started[-len(instances) :]

    yield start
    for poller in started:
        poller.kill()
        print(f"--- {poller}:\n{poller.tail()}")  # shown when the test failed


def read_topic(settings: Settings) -> list[Published]:
    """Every committed message of the site topic, in offset order per partition."""
    reader = TopicReader(settings.kafka, topic_of(settings), from_beginning=True)
    try:
        messages = list(reader.messages(stop_at_end=True, timeout=60))
    finally:
        reader.close()
    codec = Codec()
    return [
        Published(*position(m), instance_of(m), change_from_message(m, codec)) for m in messages
    ]


def changes(published: list[Published]) -> list[Change]:
    return [p.change for p in published]


def the_active(pollers: list[Poller]) -> tuple[Poller, Poller]:
    """(active, standby) once exactly one of two reports cascade_site_active 1 and the other 0."""
    roles: dict[float | None, list[Poller]] = {}

    def settled() -> bool:
        roles.clear()
        for poller in pollers:
            assert poller.proc.poll() is None, f"{poller} exited:\n{poller.tail()}"
            roles.setdefault(poller.active(), []).append(poller)
        return len(roles.get(1.0, [])) == 1 and len(roles.get(0.0, [])) == 1

    wait_for(settled, timeout=60, what="exactly one active poller and one standby")
    return roles[1.0][0], roles[0.0][0]


def first_resync_done(poller: Poller) -> bool:
    good = "cascade_site_last_good_poll_timestamp_seconds"
    return all(poller.metric(good, kind=kind) for kind in KINDS.split(","))


def test_one_of_two_publishes_and_a_killed_active_is_replaced_within_30s(
    pollers: Callable[..., tuple[RunningSim, Settings, list[Poller]]],
) -> None:
    sim, settings, started = pollers("a", "b")
    active, standby = the_active(started)
    expected = truth(sim, KINDS)
    wait_for(lambda: on_topic(settings, expected), timeout=60, what="the site on the topic")
    before = read_topic(settings)
    assert {p.instance for p in before} == {active.instance}, "every record from the active"
    heartbeats = [p.change for p in before if p.heartbeat]
    assert heartbeats and all(
        isinstance(h, StatusRecord) and h.details["instance"] == active.instance for h in heartbeats
    )
    status, health = standby.readyz()
    assert (status, health["role"], health["instance"]) == (200, "standby", standby.instance)

    killed = time.monotonic()
    os.kill(active.proc.pid, signal.SIGKILL)
    active.proc.wait(timeout=30)
    wait_for(
        lambda: any(p.instance == standby.instance for p in read_topic(settings)),
        timeout=40,
        what="a record from the standby",
    )
    failover = time.monotonic() - killed
    print(f"\nfailover after SIGKILL: {failover:.1f} s (lease timeout {LEASE_TIMEOUT:.0f} s)")
    assert failover < 30
    assert standby.active() == 1.0

    # Nothing changed at the site: the new active's first resync publishes only heartbeats,
    # and its sequence continues from the old one's.
    wait_for(lambda: first_resync_done(standby), timeout=60, what="the new active's first resync")
    after = [p for p in read_topic(settings) if p.instance == standby.instance]
    assert after and all(p.heartbeat for p in after), [p.change for p in after if not p.heartbeat]
    old_last = max(p.change.sequence or 0 for p in before)
    assert all(isinstance(p.change, StatusRecord) and p.change.sequence > old_last for p in after)

    control(sim, "/_sim/churn", {"changes": 20})
    shown = site_truth({sim.cloud: sim.url}, KINDS.split(","))
    sink_url = f"sqlite:///{Path(standby.log).parent / 'top.sqlite'}"
    top = load_settings(
        flags={
            "kafka": settings.kafka.model_dump(),
            "sink": {"url": sink_url},
            "consumer": {"group": f"{settings.kafka.topic_prefix}.top", "batch_wait_ms": 50},
        }
    )
    reader = SinkReader(sink_url)
    try:
        with consumer_running(top):
            wait_for(
                lambda: compare(shown, reader.statuses()).equal,
                timeout=60,
                what="the sink to equal the site",
            )
    finally:
        reader.close()


def test_a_paused_active_is_fenced_after_the_takeover_and_stands_by(
    pollers: Callable[..., tuple[RunningSim, Settings, list[Poller]]],
) -> None:
    sim, settings, started = pollers("a", "b")
    old, new = the_active(started)
    expected = truth(sim, KINDS)
    wait_for(lambda: on_topic(settings, expected), timeout=60, what="the site on the topic")

    os.kill(old.proc.pid, signal.SIGSTOP)
    try:
        paused = time.monotonic()
        wait_for(lambda: new.active() == 1.0, timeout=40, what="the standby to take over")
        wait_for(
            lambda: any(p.instance == new.instance for p in read_topic(settings)),
            timeout=60,
            what="a record from the new active",
        )
        print(f"\ntake-over from a paused active: {time.monotonic() - paused:.1f} s")
        # The old one is paused: whatever it writes from now on lies past these offsets.
        takeover = end_offsets(settings.kafka.bootstrap, topic_of(settings))
        control(sim, "/_sim/churn", {"changes": 20})
        expected = truth(sim, KINDS)
        wait_for(
            lambda: on_topic(settings, expected),
            timeout=60,
            what="the churn published by the new active",
        )
    finally:
        os.kill(old.proc.pid, signal.SIGCONT)

    # The old one wakes with the churn unpublished in its own view and a transaction open that
    # the take-over aborted: what it sends now is refused, and it notices and stands by.
    wait_for(
        lambda: old.active() == 0.0 or old.proc.poll() == 0,
        timeout=60,
        what="the old active to stand by",
    )
    # Because it was fenced, at its first send: not after its lease's doubt ran out (three
    # lease timeouts), which is what it would wait for if a failed transaction went unheard.
    log = old.log.read_text(errors="replace")
    assert "fenced by a newer producer" in log and "lost the lease" not in log, old.tail()
    control(sim, "/_sim/churn", {"changes": 20})
    expected = truth(sim, KINDS)
    wait_for(lambda: on_topic(settings, expected), timeout=60, what="the second churn on the topic")
    assert new.active() == 1.0 and old.proc.poll() in (None, 0)

    late = [
        f"{p.partition}@{p.offset}"
        for p in read_topic(settings)
        if p.instance == old.instance and p.offset >= takeover[p.partition]
    ]
    assert not late, f"committed records from the fenced instance: {late}"
    late = uncommitted_from(settings, old.instance, takeover)
    assert not late, f"records from the fenced instance, even uncommitted: {late}"

    # Both stop cleanly on SIGTERM, the standby as the active.
    stopping = time.monotonic()
    for poller in (old, new):
        poller.proc.send_signal(signal.SIGTERM)
    for poller in (old, new):
        assert poller.proc.wait(timeout=30) == 0, poller.tail()
    print(f"both stopped {time.monotonic() - stopping:.1f} s after SIGTERM")


def test_a_standby_that_never_gets_the_lease_of_a_silent_site_says_so_and_rejoins(
    pollers: Callable[..., tuple[RunningSim, Settings, list[Poller]]],
) -> None:
    """A member of the lease group that holds the lease and publishes nothing (a client stuck
    as librdkafka's have been, or a process that joined and hung) leaves the site silent: the
    standby says so on /readyz, rejoins with a new client (counted; again every 18 s here), and
    takes over as soon as the lease is free."""
    squatter: list[Lease] = []
    polling = threading.Event()

    def squat(settings: Settings) -> None:
        site = settings.site.name
        assert site is not None
        ensure_lease_topic(settings.kafka, site)
        topic = lease_topic(settings.kafka.topic_prefix, site)
        squatter.append(Lease(settings.kafka, topic, topic, LEASE_TIMEOUT, client_id="squatter"))
        wait_for(lambda: squatter[0].poll(0.1), timeout=60, what="the squatter to hold the lease")

        def keep() -> None:
            while not polling.is_set():
                squatter[0].poll(0.2)

        threading.Thread(target=keep, name="squatter", daemon=True).start()

    try:
        sim, settings, [standby] = pollers("s", before=squat)
        rejoins = "cascade_site_lease_rejoins_total"
        wait_for(lambda: (standby.metric(rejoins) or 0) >= 1, timeout=90, what="a rejoin")
        status, health = standby.readyz()
        assert status == 503 and "has published for" in health["lease.stalled"], health
        assert standby.active() == 0.0
    finally:
        polling.set()
        for lease in squatter:
            lease.close()
    freed = time.monotonic()
    wait_for(
        lambda: standby.active() == 1.0, timeout=60, what="the take-over once the lease is free"
    )
    expected = truth(sim, KINDS)
    wait_for(lambda: on_topic(settings, expected), timeout=60, what="the site on the topic")
    print(f"\ntook over {time.monotonic() - freed:.1f} s after the squatter left")
    wait_for(lambda: standby.readyz()[0] == 200, timeout=30, what="ready again")
    assert "lease.stalled" not in standby.readyz()[1]


def topic_of(settings: Settings) -> str:
    return f"{settings.kafka.topic_prefix}.{settings.site.name}"


def on_topic(settings: Settings, expected: dict[tuple[str, str], dict[str, Any]]) -> bool:
    """Whether the state the committed topic describes equals `expected`."""
    return not differences(changes(read_topic(settings)), expected)


def uncommitted_from(settings: Settings, instance: str, since: dict[int, int]) -> list[str]:
    """Messages from `instance` at or past `since`, read uncommitted (aborted ones too)."""
    overrides = {"isolation.level": "read_uncommitted"}
    reader = TopicReader(settings.kafka, topic_of(settings), True, **overrides)
    try:
        positions = [(position(m), m) for m in reader.messages(stop_at_end=True, timeout=60)]
        return [
            f"{partition}@{offset}"
            for (partition, offset), m in positions
            if instance_of(m) == instance and offset >= since[partition]
        ]
    finally:
        reader.close()
