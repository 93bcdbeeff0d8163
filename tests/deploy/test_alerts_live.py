"""The shipped alert rules (deploy/prometheus/alerts.yml) evaluated by a real Prometheus
(Debian's, started by connector/dev/local_prometheus.py, scraping and evaluating every second)
on live processes: one simulated cloud serving two sites, a `produce` per site, and top consumer
members joining and leaving. A member joining (it takes one site's partition from the first:
each site topic has one partition, so the move is certain) and one leaving raise no alert, and
leave none pending but CascadeCommitErrors (see `stays_quiet`); a stopped poller raises
`CascadeSiteStale` for its site alone.

The rules Prometheus loads are deploy/prometheus/alerts.yml read by this test and rewritten in
one value only: CascadeSiteStale's `for:` (1m as shipped) is STALE_FOR, so the last step waits
seconds, not a minute (`stale_sooner`). Every expression and every other `for:` is the shipped
one; the shipped `for: 1m` itself is checked by promtool's cases (alerts_test.yml,
tests/deploy/test_prometheus.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from connector.dev import free_port
from connector.dev.demo.processes import Processes, child_env, http_json, http_text, wait_until
from connector.dev.local_prometheus import LocalPrometheus
from tests.deploy.conftest import DEPLOY, Tools

SITES = ("east", "west")
#: Seconds watched for an alert after a rebalance: past CascadeSiteStale's 15 s threshold, so a
#: heartbeat age left growing by the member that lost the site would show as pending.
QUIET = 25.0
#: CascadeSiteStale's `for:` in the rules this test loads, seconds: still past a few scrapes and
#: evaluations (one a second), so the alert is pending before it fires, as in production.
STALE_FOR = 10
#: Seconds for CascadeSiteStale once the poller stops: 15 s of age, STALE_FOR, and room for the
#: loaded machine.
STALE_WITHIN = 15 + STALE_FOR + 45


def stale_sooner(shipped: Path, into: Path) -> Path:
    """`shipped` (the rule file) written to `into` with CascadeSiteStale's `for:` set to
    STALE_FOR and nothing else changed; `into`."""
    doc = yaml.safe_load(shipped.read_text())
    [stale] = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "CascadeSiteStale"]
    stale["for"] = f"{STALE_FOR}s"
    into.write_text(yaml.safe_dump(doc, sort_keys=False))
    return into


def alerting(prometheus: LocalPrometheus) -> list[str]:
    """`name{site} state` of every alert pending or firing now."""
    return sorted(
        f"{a['labels']['alertname']}{{{a['labels'].get('site', '')}}} {a['state']}"
        for a in prometheus.alerts()
    )


def holders(prometheus: LocalPrometheus) -> dict[str, set[str]]:
    """site -> the consumer members (scrape targets) exporting its heartbeat age."""
    found = prometheus.query('cascade_site_heartbeat_age_seconds{job="cascade-consumer"}')
    out: dict[str, set[str]] = {}
    for r in found:
        out.setdefault(r["metric"]["site"], set()).add(r["metric"]["instance"])
    return out


def raised(prometheus: LocalPrometheus) -> list[str]:
    """Alerts firing, and pending but CascadeCommitErrors: a rebalance fails a member's commits
    for a moment, which makes that rule pending; it fires only when commits fail for 10 minutes
    (its promtool case: one blip never fires)."""
    return [a for a in alerting(prometheus) if not a.startswith("CascadeCommitErrors{} pe")]


def active_sites(prometheus: LocalPrometheus) -> set[str]:
    """Sites whose poller Prometheus last scraped as active."""
    found = prometheus.query("max by (site) (cascade_site_active) == 1")
    return {r["metric"]["site"] for r in found}


def stays_quiet(prometheus: LocalPrometheus, procs: Processes, what: str) -> None:
    """Nothing `raised` for QUIET seconds (checked every second)."""
    until = time.monotonic() + QUIET
    while time.monotonic() < until:
        procs.check_alive()
        assert raised(prometheus) == [], f"an alert {what}"
        time.sleep(1.0)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path, {})
    yield procs
    procs.stop_all()


@pytest.mark.kafka
def test_members_joining_and_leaving_raise_no_alert_and_a_stopped_poller_raises_stale(
    kafka_bootstrap: str,
    tools: Tools,
    tmp_path: Path,
    unique_name: partial[str],
    processes: Processes,
) -> None:
    clouds = tmp_path / "clouds.yaml"
    sim = f"127.0.0.1:{free_port()}"
    pollers = {site: f"127.0.0.1:{free_port()}" for site in SITES}
    members = {name: f"127.0.0.1:{free_port()}" for name in ("a", "b")}
    processes.env = child_env(
        {
            "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CASCADE_KAFKA_TOPIC_PREFIX": unique_name("status"),
            "CASCADE_KAFKA_PARTITIONS": "1",
            "CASCADE_SITE_HEARTBEAT_INTERVAL": "1",
            "CASCADE_SITE_KINDS": "server,volume",
            "OS_CLIENT_CONFIG_FILE": str(clouds),
        }
    )
    procs = processes
    procs.start(
        "sim", "sim", *(a for site in SITES for a in ("--site", site)), "--listen", sim,
        "--servers", "10", "--volumes", "10", "--ports", "0", "--write-clouds-yaml", str(clouds),
    )  # fmt: skip
    wait_until("the sim", partial(http_json, f"http://{sim}/_sim/info"), 60, procs.check_alive)
    wait_until("its clouds.yaml", clouds.exists, 30, procs.check_alive)
    for site, listen in pollers.items():
        procs.start(
            f"poller-{site}", "produce", "--site", site, "--interval", "1",
            "--metrics-port", listen.rsplit(":", 1)[1],
        )  # fmt: skip
    group, dead = unique_name("group"), unique_name("dead")

    def member(name: str) -> None:
        procs.start(
            f"consumer-{name}", "consume", "--sink", f"sqlite:///{tmp_path / f'top-{name}.db'}",
            "--group", group, "--dead-letter-topic", dead,
            "--metrics-port", members[name].rsplit(":", 1)[1],
        )  # fmt: skip

    member("a")
    prometheus = LocalPrometheus(
        tools.prometheus,
        [stale_sooner(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")],
        {"cascade-poller": list(pollers.values()), "cascade-consumer": list(members.values())},
    )
    with prometheus:
        only_a, only_b = ({s: {members[m]} for s in SITES} for m in ("a", "b"))
        # A poller scraped while it still stood by (it takes the lease a second or two after
        # it starts) makes CascadeSiteNoActivePoller pending until its next scrape, even when
        # a scrape of the consumer already shows the site's heartbeat (seen on fresh brokers):
        # the start is settled once Prometheus has both pollers active and nothing raised.
        wait_until(
            "both sites' heartbeats at member a, both pollers active and no alert, in Prometheus",
            lambda: (
                holders(prometheus) == only_a
                and active_sites(prometheus) == set(SITES)
                and raised(prometheus) == []
            ),
            120,
            procs.check_alive,
        )
        stays_quiet(prometheus, procs, "with one member")

        member("b")
        wait_until(
            "a site's partition moved to member b",
            lambda: any(members["b"] in held for held in holders(prometheus).values()),
            120,
            procs.check_alive,
        )
        stays_quiet(prometheus, procs, "after member b joined")
        # Each site is reported by the one member that reads it.
        split = holders(prometheus)
        assert sorted(split) == sorted(SITES) and {len(h) for h in split.values()} == {1}, split
        assert set.union(*split.values()) == set(members.values()), split

        procs.stop("consumer-a")
        wait_until(
            "member b holding both sites",
            lambda: holders(prometheus) == only_b,
            120,
            procs.check_alive,
        )
        stays_quiet(prometheus, procs, "after member a left")

        procs.stop("poller-east")
        stopped = time.monotonic()
        wait_until(
            "CascadeSiteStale for east",
            lambda: "CascadeSiteStale{east} firing" in alerting(prometheus),
            STALE_WITHIN,
            procs.check_alive,
        )
        print(f"\nCascadeSiteStale fired {time.monotonic() - stopped:.0f} s after the stop")
        assert not [a for a in alerting(prometheus) if "{west}" in a]
        assert "cascade_site_heartbeat_age_seconds" in http_text(f"http://{members['b']}/metrics")
