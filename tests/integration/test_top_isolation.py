"""Per-site isolation at the top, against the real broker, a real consumer and a SQLite sink: a
site's topic speaks only for its site. Records, tombstones and heartbeats about another site
change nothing there and become dead letters with reason `wrong site` (counted per topic); a key
that arrives through two topics, and a key too large to quote in a header, never stop the
consumer."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from connector.config import load_settings
from connector.records.codec import Codec
from connector.records.model import HEARTBEAT_KIND, StatusRecord
from connector.sinks.sql import create_engine
from connector.top.dead_letters import MAX_KEY_BYTES
from tests.support.kafka import (
    committed_offsets,
    create_topic,
    end_offsets,
    header_map,
    publish,
)
from tests.support.top import consumer_running

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def server(site: str, obj: str, seq: int, status: str) -> StatusRecord:
    return StatusRecord(
        site=site,
        kind="server",
        id=obj,
        status=status,
        sequence=seq,
        observed_at=T0 + timedelta(milliseconds=seq),
    )


def heartbeat(site: str, seq: int, status: str) -> StatusRecord:
    return StatusRecord(
        site=site,
        kind=HEARTBEAT_KIND,
        id=site,
        status=status,
        sequence=seq,
        observed_at=T0 + timedelta(milliseconds=seq),
        details={"poll.interval": 10},
    )


def rows(db: Path) -> dict[tuple[str, str, str], tuple[str | None, int, bool]]:
    with create_engine(f"sqlite:///{db}").connect() as conn:
        found = conn.execute(
            sa.text("SELECT site, kind, id, status, sequence, deleted FROM resource_status")
        )
        return {(r[0], r[1], r[2]): (r[3], r[4], bool(r[5])) for r in found}


def heartbeats(db: Path) -> dict[str, tuple[str | None, int]]:
    with create_engine(f"sqlite:///{db}").connect() as conn:
        found = conn.execute(sa.text("SELECT site, status, sequence FROM site_heartbeat"))
        return {r[0]: (r[1], r[2]) for r in found}


def read_all(bootstrap: str, topic: str, count: int, group: str) -> list[Message]:
    reader = RawConsumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    )
    reader.subscribe([topic])
    found: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while len(found) < count and time.monotonic() < deadline:
            msg = reader.poll(1)
            if msg is not None and msg.error() is None:
                found.append(msg)
    finally:
        reader.close()
    return found


def test_another_sites_records_tombstones_and_heartbeats_change_nothing_of_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    prefix = unique_name("status")
    settings = load_settings(
        flags={
            "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": prefix},
            "sink": {"url": f"sqlite:///{db}"},
            "consumer": {
                "group": unique_name("group"),
                "dead_letter_topic": unique_name("dlq"),
                "batch_wait_ms": 100,
            },
        }
    )
    topic_a, topic_b = f"{prefix}.site-a", f"{prefix}.site-b"
    create_topic(kafka_bootstrap, topic_a, partitions=1)
    create_topic(kafka_bootstrap, topic_b, partitions=1)
    # site-b's own truth, from its own topic.
    publish(
        kafka_bootstrap,
        topic_b,
        [server("site-b", "vm-1", 10, "ACTIVE"), heartbeat("site-b", 11, "ok")],
    )
    codec = Codec()
    hostile = [
        # A status record about site-b, with a sequence that would win over site-b's own.
        (b"site-b/server/vm-1", codec.encode(server("site-b", "vm-1", 1000, "HOSTILE"))),
        # A tombstone for site-b's object.
        (b"site-b/server/vm-1", None),
        # A heartbeat for site-b, and a tombstone for its heartbeat row.
        (b"site-b/site/site-b", codec.encode(heartbeat("site-b", 1001, "hostile"))),
        (b"site-a/site/site-b", None),
    ]
    # A key that is no key at all, too large to quote in a dead letter's header.
    huge_key = b"\xff" * 300_000
    publish(
        kafka_bootstrap,
        topic_a,
        [server("site-a", "vm-1", 1, "ACTIVE")],
        raw=[*hostile, (huge_key, b"x")],
    )
    publish(kafka_bootstrap, topic_a, [server("site-a", "vm-2", 2, "ACTIVE")])
    # site-b/server/vm-1 also comes through its own topic, in the same windows as above.
    publish(kafka_bootstrap, topic_b, [server("site-b", "vm-1", 12, "SHUTOFF")])

    registry = CollectorRegistry()
    with consumer_running(settings, registry, until_idle=True, timeout=120.0):
        pass

    assert rows(db) == {
        ("site-a", "server", "vm-1"): ("ACTIVE", 1, False),
        ("site-a", "server", "vm-2"): ("ACTIVE", 2, False),
        ("site-b", "server", "vm-1"): ("SHUTOFF", 12, False),
    }
    assert heartbeats(db) == {"site-b": ("ok", 11)}
    for topic in (topic_a, topic_b):
        assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
            kafka_bootstrap, topic
        )

    letters = read_all(kafka_bootstrap, settings.consumer.dead_letter_topic, 5, unique_name("r"))
    by_offset = {int(header_map(m)["original.offset"]): m for m in letters}
    assert sorted(by_offset) == [1, 2, 3, 4, 5]
    for offset, (key, value) in enumerate(hostile, start=1):
        msg = by_offset[offset]
        headers = header_map(msg)
        assert headers["reason"] == b"wrong site"
        assert headers["original.topic"] == topic_a.encode()
        assert (msg.key(), msg.value()) == (key, value)
        assert b"site-b" in headers["error"]
    bad_key = by_offset[5]
    assert header_map(bad_key)["reason"] == b"decode"
    assert bad_key.key() == huge_key[:MAX_KEY_BYTES]
    assert header_map(bad_key)["original.key.bytes"] == b"300000"
    assert len(header_map(bad_key)["error"]) <= 1024

    wrong = registry.get_sample_value(
        "cascade_consumer_wrong_site_records_total", {"topic": topic_a}
    )
    assert wrong == len(hostile)
    assert registry.get_sample_value(
        "cascade_consumer_wrong_site_records_total", {"topic": topic_b}
    ) in (None, 0.0)
