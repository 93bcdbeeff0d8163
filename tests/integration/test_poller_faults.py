"""A site in trouble: the running poller survives 5xx and hanging APIs, keeps the other kinds
going, says degraded in its heartbeat and metrics, and catches up after."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connector.dev.sim import RunningSim
from connector.errors import KafkaError
from connector.records.model import StatusRecord
from connector.site.runner import open_site_poller, run_site
from tests.support import wait_for
from tests.support.sim import Topic, control, differences, site_settings, truth

KINDS = "server,volume,port"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    "fault", [{"status": 500}, {"delay": 3.0}], ids=["answers-500", "hangs-past-the-timeout"]
)
def test_failing_service_degrades_then_catches_up(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], fault: dict[str, Any]
) -> None:
    sim = open_sim(servers=60, volumes=60, ports=60, token_ttl=3.0)
    settings = site_settings(
        kafka_bootstrap,
        sim,
        kinds=KINDS,
        interval=0.2,
        resync_interval=1.0,
        heartbeat_interval=0.3,
        backoff_initial=0.1,
        backoff_max=0.5,
        api_timeout=1.0,
    )
    registry = CollectorRegistry()
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            run_site(settings, registry=registry, stop=stop)
        except BaseException as exc:
            failed.append(exc)

    site = sim.cloud
    thread = threading.Thread(target=run, name="poller-under-test")
    thread.start()
    try:
        good = "cascade_site_last_good_poll_timestamp_seconds"
        wait_for(
            lambda: all(sample(registry, good, site=site, kind=k) for k in KINDS.split(",")),
            timeout=60,
            what="a first good poll of every kind",
        )
        topic = Topic(kafka_bootstrap, f"test.produce.{site}")
        topic.new()

        # Nova fails for a while (all of it: discovery too); Cinder and Neutron do not.
        control(sim, "/_sim/faults", {"seconds": 4.0, "paths": ["/compute"], **fault})
        faulted_at = time.time()
        control(sim, "/_sim/churn", {"changes": 20})

        wait_for(
            lambda: any(
                isinstance(c, StatusRecord)
                and c.is_heartbeat
                and c.status == "degraded"
                and c.details.get("server.error")
                for c in topic.new()
            ),
            timeout=60,
            what="a degraded heartbeat naming the failing kind",
        )
        assert sample(registry, "cascade_site_degraded", site=site) == 1
        assert sample(registry, "cascade_site_api_errors_total", site=site, kind="server") > 0
        wait_for(
            lambda: (
                min(sample(registry, good, site=site, kind=k) for k in ("volume", "port"))
                > faulted_at
            ),
            timeout=60,
            what="the other kinds to keep polling",
        )
        assert sample(registry, good, site=site, kind="server") < faulted_at

        expected = truth(sim, KINDS)
        wait_for(
            lambda: not differences(topic.all(settle=False), expected),
            timeout=60,
            what="the poller to catch up with the site after the fault",
        )
        wait_for(
            lambda: any(
                isinstance(c, StatusRecord) and c.is_heartbeat and c.status == "ok"
                for c in topic.new()
            ),
            timeout=60,
            what="an ok heartbeat",
        )
        assert sample(registry, "cascade_site_degraded", site=site) == 0
        assert sample(registry, "cascade_site_produce_errors_total", site=site) == 0
        assert thread.is_alive() and not failed
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert failed == []


def test_a_failing_flush_does_not_hide_why_the_run_failed(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = open_sim(servers=5, volumes=5, ports=5)
    site = open_site_poller(site_settings(kafka_bootstrap, sim, kinds="server"))

    def broken_heartbeat() -> None:
        raise RuntimeError("the heartbeat broke")

    def failing_flush(timeout: float = 60.0) -> None:
        raise KafkaError("5 message(s) still undelivered")

    monkeypatch.setattr(site, "heartbeat", broken_heartbeat)
    monkeypatch.setattr(site.producer, "flush", failing_flush)
    with pytest.raises(RuntimeError, match="the heartbeat broke"):
        site.run(threading.Event(), once=True)
