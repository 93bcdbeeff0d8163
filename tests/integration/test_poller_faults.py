"""A site in trouble: the running poller survives 5xx and hanging APIs, keeps the other kinds
going, says degraded in its heartbeat and metrics, and catches up after."""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType
from prometheus_client import CollectorRegistry

from connector.dev.sim import RunningSim
from connector.errors import KafkaError
from connector.kafka.topics import ensure_site_topic
from connector.records.model import StatusRecord
from connector.site.kinds import Observation, Unreadable
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


def test_an_object_larger_than_the_topic_takes_is_skipped_and_the_rest_published(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    """The site topic takes records of 20,000 bytes at most (max.message.bytes): one object
    larger is refused as it is queued, and skipped; the records around it, in the same
    transaction, are committed. Before, the broker refused the whole batch and the transaction
    aborted: the good records went with it and the poller's term ended."""
    sim = open_sim(servers=30, volumes=0, ports=0)
    settings = site_settings(kafka_bootstrap, sim, kinds="server")
    site, topic = sim.cloud, f"{settings.kafka.topic_prefix}.{sim.cloud}"
    ensure_site_topic(settings.kafka, site)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    small = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", "20000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([small])[small].result(timeout=30)

    poller = open_site_poller(settings)
    poller.cycle(resync=True)
    # Incompressible, so that the broker sees it over its limit after compression too.
    blob = base64.b64encode(random.Random(26).randbytes(30_000)).decode()
    big = Observation(id="big", status="ACTIVE", name="big", project_id="p", details={"b": blob})
    with pytest.raises(Unreadable, match=r"message.max.bytes: 20000"):
        poller.publisher.observe("server", big)
    after = Observation(id="after", status="ACTIVE", name="after", project_id="p")
    assert poller.publisher.observe("server", after)
    poller.flush()  # raised TransactionFailed before: the batch with the big record was refused
    assert poller.producer.failure is None

    ids = {c.id for c in Topic(kafka_bootstrap, topic).all() if c.kind == "server"}
    assert ids == {i for _kind, i in truth(sim, "server")} | {"after"}
