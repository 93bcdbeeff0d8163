"""A site that goes dark reads UNKNOWN at the top, with hysteresis; a site whose APIs fail reads
degraded. Real `produce` processes (one is paused with SIGSTOP, as a hung host would be), the
real broker, the top consumer into PostgreSQL, simulated sites; heartbeats every second so each
test takes seconds. Every process is stopped by its pid, a paused one resumed first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from connector.config import load_settings
from connector.dev.sim import RunningSim
from connector.sinks.sql import sqlalchemy_url
from tests.support import wait_for
from tests.support.sim import control
from tests.support.top import consumer_running

KINDS = "server,volume"
HEARTBEAT = 1.0  #: seconds between heartbeats
POLL = 3.0  #: seconds between polls
OFFLINE_AFTER = 3  #: heartbeat intervals (the default)


class Poller:
    """One `produce` process for a site, its log in a file."""

    def __init__(self, sim: RunningSim, bootstrap: str, prefix: str, logs: Path) -> None:
        self.log = logs / f"poller-{sim.cloud}.log"
        command = [sys.executable, "-m", "connector", "produce", "--bootstrap", bootstrap]
        command += ["--site", sim.cloud, "--kinds", KINDS, "--interval", str(POLL)]
        # A pause of a few seconds must not cost the lease: this test is about the top's view.
        command += ["--resync-interval", "30", "--lease-timeout", "60"]
        env = {
            **os.environ,
            "CASCADE_KAFKA_TOPIC_PREFIX": prefix,
            "CASCADE_SITE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
            "CASCADE_SITE_BACKOFF_INITIAL": "0.2",
            "CASCADE_SITE_BACKOFF_MAX": "1",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


class Top:
    """The top consumer in a thread, and reads of what it wrote."""

    def __init__(self, bootstrap: str, prefix: str, url: str) -> None:
        settings = load_settings(
            flags={
                "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix},
                "sink": {"url": url},
                "consumer": {"group": f"{prefix}.top", "batch_wait_ms": 50},
            }
        )
        self.registry = CollectorRegistry()
        self._consuming = ExitStack()
        self._consuming.enter_context(consumer_running(settings, self.registry))
        self.engine = sa.create_engine(sqlalchemy_url(url))

    def stop(self) -> None:
        """Stop the consumer (raising what it raised) and close its sink."""
        self._consuming.close()
        self.engine.dispose()

    def effective(self, site: str) -> dict[str, tuple[str | None, str | None]]:
        """id -> (status, last_known_status) of the site's live objects, from the view."""
        query = sa.text(
            "SELECT kind, id, status, last_known_status FROM resource_status_effective "
            "WHERE site = :site AND NOT deleted"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"site": site}).all()
        return {f"{r.kind}/{r.id}": (r.status, r.last_known_status) for r in rows}

    def state(self, site: str) -> str | None:
        query = sa.text("SELECT state FROM site_availability WHERE site = :site")
        with self.engine.connect() as conn:
            value = conn.execute(query, {"site": site}).scalar()
        return None if value is None else str(value)

    def entered(self, site: str, state: str) -> float:
        value = self.registry.get_sample_value(
            "cascade_site_availability_transitions_total", {"site": site, "state": state}
        )
        return value or 0.0


@pytest.fixture
def dark_sites(
    kafka_bootstrap: str,
    open_sim: Callable[..., RunningSim],
    postgres_database: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> Iterator[Callable[[int], tuple[Top, list[tuple[RunningSim, Poller]]]]]:
    """`dark_sites(n)`: n small simulated sites, a poller process each, and the top consumer,
    once every site's objects are at the top and its site online."""
    pollers: list[Poller] = []
    tops: list[Top] = []
    prefix = unique_name("avail")

    def start(n: int) -> tuple[Top, list[tuple[RunningSim, Poller]]]:
        sites = []
        for _ in range(n):
            sim = open_sim(servers=20, volumes=20, ports=0)
            poller = Poller(sim, kafka_bootstrap, prefix, tmp_path)
            pollers.append(poller)
            sites.append((sim, poller))
        top = Top(kafka_bootstrap, prefix, postgres_database)
        tops.append(top)
        for sim, poller in sites:

            def shown(site: str = sim.cloud) -> bool:
                return len(top.effective(site)) == 40 and top.state(site) == "online"

            wait_for(
                shown,
                timeout=120,
                what=f"{sim.cloud}'s objects at the top and the site online:\n{poller.tail()}",
            )
        return top, sites

    yield start
    for poller in pollers:
        poller.kill()
        print(f"--- {poller.log.name}:\n{poller.tail()}")  # shown when the test failed
    for top in tops:
        top.stop()


def unknown(top: Top, site: str) -> bool:
    view = top.effective(site)
    return bool(view) and all(status == "UNKNOWN" and known for status, known in view.values())


def test_a_paused_poller_reads_unknown_and_its_return_restores_every_status(
    dark_sites: Callable[[int], tuple[Top, list[tuple[RunningSim, Poller]]]],
) -> None:
    top, [(dark, poller), (other, _)] = dark_sites(2)
    before = top.effective(dark.cloud)
    others = top.effective(other.cloud)

    # One heartbeat lost (a pause of 1.5 intervals) is not an outage.
    poller.signal(signal.SIGSTOP)
    lost_until = time.monotonic() + 1.5 * HEARTBEAT
    while time.monotonic() < lost_until:
        assert top.state(dark.cloud) == "online"
        time.sleep(0.1)
    poller.signal(signal.SIGCONT)
    settle = time.monotonic() + 2 * HEARTBEAT
    while time.monotonic() < settle:
        assert top.state(dark.cloud) == "online"
        time.sleep(0.1)
    assert top.entered(dark.cloud, "offline") == 0

    poller.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    wait_for(
        lambda: unknown(top, dark.cloud),
        timeout=OFFLINE_AFTER * HEARTBEAT + 5,
        what="the paused site's objects to read UNKNOWN",
    )
    took = time.monotonic() - stopped
    print(f"\nUNKNOWN {took:.1f} s after SIGSTOP (bound {OFFLINE_AFTER + 5} s)")
    # The view keeps the last known status; the other site reads as it did.
    assert {k: known for k, (_s, known) in top.effective(dark.cloud).items()} == {
        k: status for k, (status, _k) in before.items()
    }
    assert top.effective(other.cloud) == others
    assert top.state(other.cloud) == "online"

    poller.signal(signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(
        lambda: top.effective(dark.cloud) == before,
        timeout=2 * POLL,
        what="every object of the site back to its status",
    )
    print(f"back {time.monotonic() - resumed:.1f} s after SIGCONT (bound {2 * POLL:g} s)")
    assert top.state(dark.cloud) == "online"
    assert top.entered(dark.cloud, "offline") == 1


def test_a_site_whose_apis_fail_reads_degraded_never_offline_and_keeps_its_statuses(
    dark_sites: Callable[[int], tuple[Top, list[tuple[RunningSim, Poller]]]],
) -> None:
    top, [(sim, _poller)] = dark_sites(1)
    before = top.effective(sim.cloud)
    faulted = 4 * OFFLINE_AFTER * HEARTBEAT
    control(sim, "/_sim/faults", {"seconds": faulted, "status": 500})
    until = time.monotonic() + faulted
    seen = set()
    while time.monotonic() < until:
        seen.add(top.state(sim.cloud))
        assert top.effective(sim.cloud) == before
        time.sleep(0.2)
    assert "degraded" in seen and "offline" not in seen, seen
    assert top.entered(sim.cloud, "offline") == 0
    wait_for(lambda: top.state(sim.cloud) == "online", timeout=30, what="the site online again")
