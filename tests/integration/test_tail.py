"""`tail` against the real broker: records, tombstones and a garbage record, as JSON lines."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import confluent_kafka
import pytest
from click.testing import CliRunner, Result

from connector.cli import cli
from connector.config import KafkaSettings
from connector.kafka.topics import ensure_site_topic, site_topic
from connector.records.codec import Codec
from connector.records.messages import to_message
from connector.records.model import Deletion
from tests.support.kafka import Writer
from tests.support.records import EXAMPLES

pytestmark = pytest.mark.kafka

SITE = EXAMPLES[0].site


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes | None, Any]]) -> None:
    """Produce in order to partition 0 and wait for every delivery, raising on any failure."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    failures = []

    def report(err: confluent_kafka.KafkaError | None, _msg: confluent_kafka.Message) -> None:
        if err is not None:
            failures.append(err)

    for key, value, headers in messages:
        producer.produce(topic, value, key, partition=0, headers=headers, on_delivery=report)
    assert producer.flush(30) == 0
    assert failures == []


def _tail(bootstrap: str, prefix: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["tail", "--site", SITE, "--prefix", prefix, "--bootstrap", bootstrap, *args]
    )


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> tuple[str, str]:
    prefix = unique_name("p")
    ensure_site_topic(KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix), SITE)
    return prefix, site_topic(prefix, SITE)


def test_tail_prints_records_tombstones_and_goes_on_past_garbage(
    kafka_bootstrap: str, topic: tuple[str, str]
) -> None:
    prefix, name = topic
    codec = Codec()
    server, volume, port, heartbeat = (to_message(r, codec) for r in EXAMPLES)
    gone = to_message(Deletion(SITE, "port", EXAMPLES[2].id, 2000), codec)
    wrong_key = EXAMPLES[0].key.replace("server", "volume").encode()
    _produce(
        kafka_bootstrap,
        name,
        [
            (server.key, server.value, None),
            (volume.key, volume.value, None),
            (b"site-a/server/junk", b"\x07not avro at all", None),
            (port.key, port.value, None),
            (gone.key, None, gone.headers),
            (wrong_key, server.value, None),
            (heartbeat.key, heartbeat.value, None),
        ],
    )

    result = _tail(kafka_bootstrap, prefix, "--from-beginning", "--exit-at-end")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["partition"], line["offset"]) for line in lines] == [(0, n) for n in range(7)]
    assert [line["key"] for line in lines] == [
        EXAMPLES[0].key,
        EXAMPLES[1].key,
        "site-a/server/junk",
        EXAMPLES[2].key,
        EXAMPLES[2].key,
        wrong_key.decode(),
        EXAMPLES[3].key,
    ]
    assert lines[0]["value"]["details"]["vm_state"] == "active"
    assert lines[0]["value"]["observed_at"] == EXAMPLES[0].observed_at.isoformat()
    assert lines[1]["value"]["details"]["attachments"] == EXAMPLES[1].details["attachments"]
    assert "value" not in lines[2]
    assert lines[2]["error"].startswith("unknown framing")
    assert lines[3]["value"]["revision"] == 17
    assert lines[4]["value"] is None
    assert lines[4]["sequence"] == 2000
    assert "disagrees" in lines[5]["error"]
    assert lines[6]["value"]["kind"] == "site"
    assert lines[6]["value"]["details"]["volume.error"] == "HTTP 503 from block-storage"


def test_tail_limit_stops_after_n_records(kafka_bootstrap: str, topic: tuple[str, str]) -> None:
    prefix, name = topic
    codec = Codec()
    messages = [to_message(r, codec) for r in EXAMPLES]
    _produce(kafka_bootstrap, name, [(m.key, m.value, None) for m in messages])

    result = _tail(kafka_bootstrap, prefix, "--from-beginning", "--limit", "2")
    assert result.exit_code == 0, result.output
    keys = [json.loads(line)["key"] for line in result.stdout.splitlines()]
    assert keys == [EXAMPLES[0].key, EXAMPLES[1].key]


def test_tail_starts_at_the_end_by_default(kafka_bootstrap: str, topic: tuple[str, str]) -> None:
    prefix, name = topic
    message = to_message(EXAMPLES[0], Codec())
    _produce(kafka_bootstrap, name, [(message.key, message.value, None)])

    result = _tail(kafka_bootstrap, prefix, "--exit-at-end")
    assert result.exit_code == 0, result.output
    # stdout alone: another test's client left behind may log on stderr meanwhile.
    assert result.stdout == ""


def test_tail_of_a_missing_topic_is_kafka_trouble(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    result = _tail(kafka_bootstrap, unique_name("p"), "--exit-at-end")
    assert result.exit_code == 4
    assert "cannot read topic" in result.output


def test_tail_with_a_bad_librdkafka_setting_is_a_usage_error(kafka_bootstrap: str) -> None:
    result = _tail(kafka_bootstrap, "cascade.status", "-X", "no.such.key=1")
    assert result.exit_code == 2
    assert "kafka.librdkafka: No such configuration property" in result.output


def test_exit_at_end_ends_while_the_topic_keeps_growing(
    kafka_bootstrap: str, topic: tuple[str, str]
) -> None:
    prefix, name = topic
    message = to_message(EXAMPLES[3], Codec())
    _produce(kafka_bootstrap, name, [(message.key, message.value, None)] * 20)
    results: list[Result] = []
    with Writer(kafka_bootstrap, name, message.key, message.value) as writer:
        before = writer.written
        tail = threading.Thread(
            target=lambda: results.append(
                _tail(kafka_bootstrap, prefix, "--from-beginning", "--exit-at-end")
            ),
            daemon=True,
        )
        tail.start()
        tail.join(60)
        assert not tail.is_alive(), "tail --exit-at-end did not end on a live topic"
        after = writer.written
    [result] = results
    assert result.exit_code == 0, result.output
    offsets = [json.loads(line)["offset"] for line in result.stdout.splitlines()]
    # Everything up to the end the read started with, in order, and nothing past it.
    assert offsets == list(range(len(offsets)))
    assert 20 + before <= len(offsets) <= 20 + after
    assert after > before, "the topic was written to while tail read it"
