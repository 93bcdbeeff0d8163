"""Every metric the Grafana dashboard and the alert rules name is served by a live poller's or
consumer's /metrics: a simulated site sending its notifications to a real RabbitMQ (`rabbit`),
two `cascade-connector produce` of that site (one active, one standby) listening to it, and
`consume`, all run for real against the broker. The notification metrics exist only where
notifications are configured, so the pollers are; a churn in the site makes them count. The
periodic audit's metrics exist only where the audit runs, so the consumer audits. Also the
probes the Kubernetes manifests use: the standby is ready (a spare), /livez stays 200 while the
active poller is degraded, /readyz not.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.dev import free_port
from connector.dev.demo.processes import Processes, child_env, http_json, http_text, wait_until
from connector.dev.local_rabbit import LocalRabbit
from tests.deploy.dashboard import alert_queries, load_dashboard, named_metrics, panel_queries

SITE = "east"


def served(metrics_text: str) -> set[str]:
    """Every series name the exposition makes queryable, also of metrics with no sample yet."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def value(metrics_text: str, name: str) -> float:
    """The sum of the samples of `name`."""
    families = text_string_to_metric_families(metrics_text)
    return sum(s.value for f in families for s in f.samples if s.name == name)


def status(url: str) -> int:
    try:
        with urlopen(url, timeout=10) as response:
            return int(response.status)
    except HTTPError as exc:
        return exc.code


@pytest.mark.kafka
def test_every_metric_on_the_dashboard_is_served(
    kafka_bootstrap: str, tmp_path: Path, unique_name: partial[str], rabbit: LocalRabbit
) -> None:
    clouds = tmp_path / "clouds.yaml"
    sim, poller, standby, consumer = (f"http://127.0.0.1:{free_port()}" for _ in range(4))
    bus = rabbit.url
    env = {
        "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CASCADE_KAFKA_TOPIC_PREFIX": unique_name("status"),
        "CASCADE_SITE_HEARTBEAT_INTERVAL": "1",
        "CASCADE_NOTIFICATIONS_URL": bus,
        "OS_CLIENT_CONFIG_FILE": str(clouds),
    }
    procs = Processes(tmp_path, child_env(env))
    try:
        procs.start(
            "sim", "sim", "--site", SITE, "--listen", sim.removeprefix("http://"),
            "--servers", "20", "--volumes", "20", "--ports", "20", "--notify", bus,
            "--write-clouds-yaml", str(clouds),
        )  # fmt: skip
        wait_until("the sim", partial(http_json, f"{sim}/_sim/info"), 60, procs.check_alive)
        wait_until("its clouds.yaml", clouds.exists, 30, procs.check_alive)
        procs.start(
            "poller", "produce", "--site", SITE, "--interval", "1",
            "--metrics-port", poller.rsplit(":", 1)[1],
        )  # fmt: skip
        # The poller serves once its topic exists: the consumer's subscription then finds it at
        # once instead of at its next metadata refresh.
        wait_until(
            "the poller to be active",
            lambda: value(http_text(f"{poller}/metrics"), "cascade_site_active") == 1,
            60,
            procs.check_alive,
        )
        procs.start(
            "standby", "produce", "--site", SITE, "--interval", "1",
            "--metrics-port", standby.rsplit(":", 1)[1],
        )  # fmt: skip
        procs.start(
            "consumer", "consume", "--sink", f"sqlite:///{tmp_path / 'top.sqlite'}",
            "--group", unique_name("group"), "--dead-letter-topic", unique_name("dead"),
            "--max-rate", "1000", "--metrics-port", consumer.rsplit(":", 1)[1],
            "--audit-interval", "2",
        )  # fmt: skip
        heartbeat = f'cascade_site_heartbeat_age_seconds{{site="{SITE}"}}'
        wait_until(
            "a heartbeat at the consumer",
            lambda: heartbeat in http_text(f"{consumer}/metrics"),
            120,
            procs.check_alive,
        )
        wait_until(
            "the poller listening to the bus",
            lambda: value(http_text(f"{poller}/metrics"), "cascade_site_notifications_up") == 1,
            60,
            procs.check_alive,
        )
        http_json(f"{sim}/_sim/churn", {"changes": 30})
        wait_until(
            "a poll triggered by a notification",
            lambda: value(http_text(f"{poller}/metrics"), "cascade_site_notification_polls_total"),
            60,
            procs.check_alive,
        )
        wait_until(
            "the standby serving",
            lambda: status(f"{standby}/readyz") == 200,
            60,
            procs.check_alive,
        )
        exposed = served(http_text(f"{poller}/metrics")) | served(http_text(f"{consumer}/metrics"))
        queries = panel_queries(load_dashboard()) + alert_queries()
        missing = {n: t for n, t in named_metrics(queries).items() if n not in exposed}
        assert not missing, "named in a panel or alert but served by no poller or consumer:\n" + (
            "\n".join(f"  {name}  (in: {', '.join(sorted(set(t)))})" for name, t in missing.items())
        )

        for url in (poller, consumer):
            assert status(f"{url}/livez") == 200
            assert status(f"{url}/readyz") == 200
        # The standby is ready and alive (the probes keep it as a spare), and not active.
        assert http_json(f"{standby}/readyz")["role"] == "standby"
        assert status(f"{standby}/livez") == 200
        assert value(http_text(f"{standby}/metrics"), "cascade_site_active") == 0
        # Every API call of the site fails: the active poller is degraded, not ready, but alive.
        http_json(f"{sim}/_sim/faults", {"seconds": 120, "status": 500})
        wait_until(
            "the poller to turn unready",
            lambda: status(f"{poller}/readyz") == 503,
            60,
            procs.check_alive,
        )
        assert status(f"{poller}/healthz") == 503
        assert status(f"{poller}/livez") == 200
    finally:
        procs.stop_all()
