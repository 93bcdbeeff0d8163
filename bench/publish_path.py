"""The producer path alone: `Publisher.observe` of server observations against raw fastavro
plus librdkafka `produce` of the same records, with the same producer settings.

`bench/ceilings.py` runs this pair; `bench/producer_history.py` runs it against older checkouts
of the product, so this module imports only product APIs unchanged since before issue 25
(the publisher, codec, producer, site metrics and health), nothing of `bench/common.py`.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import fastavro
from prometheus_client import CollectorRegistry

from connector.kafka.producer import PRODUCER_DEFAULTS, Producer
from connector.kafka.settings import KafkaSettings
from connector.records.codec import SINGLE_OBJECT_MARKER, Codec
from connector.records.schemas import current_schema
from connector.site.heartbeat import Health
from connector.site.kinds import Observation
from connector.site.publisher import Publisher
from connector.site.site_metrics import SiteMetrics

#: librdkafka's in-process mock cluster (a test feature of librdkafka: no broker, no network
#: round trips), for the producer pair measuring CPU; the bootstrap is ignored with it.
MOCK = {"test.mock.num.brokers": "1"}
MOCK_BOOTSTRAP = "127.0.0.1:9"


#: The `source_updated_at` of `server_observation`: fixed, so runs write the same records.
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def server_observation(site: str, i: int) -> Observation:
    """Server number `i` of `site` as a poller would observe it (a key is site/kind/id), for the
    benches that publish records of the resource_status shape (ceilings, rebuild)."""
    return Observation(
        id=f"{i:08d}-7c6e-3b7a-4d6e-9a592f0c5d1e",
        status="ACTIVE" if i % 7 else "SHUTOFF",
        name=f"web-frontend-{i}",
        project_id="4f1c2b7e9d8a4c6b8e2f1a0d3c5b7e9f",
        details={
            "vm_state": "active",
            "task_state": None,
            "power_state": 1,
            "host": f"compute-{i % 50:02d}.{site}",
        },
        source_updated_at=T0,
        revision=None,
        deleted=False,
    )


def observations(n: int) -> list[Observation]:
    return [server_observation("site-a", i) for i in range(n)]


def producer_ours(
    bootstrap: str, topic: str, site: str, obs: list[Observation], extra: dict[str, str]
) -> float:
    registry = CollectorRegistry()
    metrics = SiteMetrics(registry, site)
    producer = Producer(KafkaSettings(bootstrap=bootstrap, librdkafka=extra))
    publisher = Publisher(
        site, topic, producer, Codec(), metrics, Health(["server"], metrics), {}, 0
    )
    started = time.perf_counter()
    for o in obs:
        publisher.observe("server", o)
    producer.flush()
    return time.perf_counter() - started


def producer_raw(
    bootstrap: str, topic: str, records: list[dict[str, Any]], extra: dict[str, str]
) -> float:
    schema = current_schema()
    prefix = SINGLE_OBJECT_MARKER + schema.fingerprint
    producer = confluent_kafka.Producer(
        {**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap, **extra}
    )
    failed = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    started = time.perf_counter()
    for record in records:
        out = io.BytesIO()
        out.write(prefix)
        fastavro.schemaless_writer(out, schema.parsed, record)
        key = f"{record['site']}/{record['kind']}/{record['id']}".encode()
        while True:
            try:
                producer.produce(topic, out.getvalue(), key, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    seconds = time.perf_counter() - started
    if failed:
        raise SystemExit(f"raw produce: {len(failed)} deliveries failed, e.g. {failed[0]}")
    return seconds


def avro_dict(site: str, sequence: int, o: Observation) -> dict[str, Any]:
    return {
        "site": site,
        "kind": "server",
        "id": o.id,
        "sequence": sequence,
        "observed_at": datetime.now(UTC),
        "status": o.status,
        "name": o.name,
        "project_id": o.project_id,
        "details": dict(o.details),
        "source_updated_at": o.source_updated_at,
        "revision": o.revision,
    }
