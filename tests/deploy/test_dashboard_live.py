"""Every metric the Grafana dashboard and the alert rules name is served by a live poller's or
consumer's /metrics: a simulated site, `cascade-connector produce` and `consume` run for real
against the broker. Also the probes: /livez stays 200 while the poller is degraded, /readyz not.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.demo.processes import Processes, child_env, http_json, http_text, wait_until
from connector.ops import free_port
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


def status(url: str) -> int:
    try:
        with urlopen(url, timeout=10) as response:
            return int(response.status)
    except HTTPError as exc:
        return exc.code


@pytest.mark.kafka
def test_every_metric_on_the_dashboard_is_served(
    kafka_bootstrap: str, tmp_path: Path, unique_name: partial[str]
) -> None:
    clouds = tmp_path / "clouds.yaml"
    sim, poller, consumer = (f"http://127.0.0.1:{free_port()}" for _ in range(3))
    env = {
        "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CASCADE_KAFKA_TOPIC_PREFIX": unique_name("status"),
        "CASCADE_SITE_HEARTBEAT_INTERVAL": "1",
        "OS_CLIENT_CONFIG_FILE": str(clouds),
    }
    procs = Processes(tmp_path, child_env(env))
    try:
        procs.start(
            "sim", "sim", "--site", SITE, "--listen", sim.removeprefix("http://"),
            "--servers", "20", "--volumes", "20", "--ports", "20",
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
        wait_until("the poller", partial(http_text, f"{poller}/livez"), 60, procs.check_alive)
        procs.start(
            "consumer", "consume", "--sink", f"sqlite:///{tmp_path / 'top.sqlite'}",
            "--group", unique_name("group"), "--dead-letter-topic", unique_name("dead"),
            "--max-rate", "1000", "--metrics-port", consumer.rsplit(":", 1)[1],
        )  # fmt: skip
        heartbeat = f'cascade_site_heartbeat_age_seconds{{site="{SITE}"}}'
        wait_until(
            "a heartbeat at the consumer",
            lambda: heartbeat in http_text(f"{consumer}/metrics"),
            120,
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
        # Every API call of the site fails: the poller is degraded, not ready, but alive.
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
