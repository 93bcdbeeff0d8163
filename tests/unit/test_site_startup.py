"""The start-up steps of a poller and its election under Kafka trouble (no network): retried while
Kafka fails, given up at once on a stop, and what an abandoned step made is closed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.dev import free_port
from connector.errors import KafkaError
from connector.kafka.client import close_within
from connector.site.startup import Stopped, until_kafka_answers
from tests.support.cli import run

SITE = load_settings(env={"CASCADE_SITE_BACKOFF_INITIAL": "0.01"}).site


def test_a_transient_kafka_error_is_retried_and_reported() -> None:
    attempts: list[int] = []
    troubles: list[str] = []

    def call() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise KafkaError("all brokers down")
        return "made"

    assert until_kafka_answers("make it", call, threading.Event(), SITE, troubles.append) == "made"
    assert len(attempts) == 3
    assert troubles == ["make it: all brokers down"] * 2


def test_a_stop_abandons_a_hanging_step_and_its_late_result_is_discarded() -> None:
    stop, release = threading.Event(), threading.Event()
    discarded: list[str] = []

    def hanging() -> str:
        release.wait(30)  # a librdkafka call waiting for a broker that is down
        return "client"

    threading.Timer(0.3, stop.set).start()
    begun = time.monotonic()
    with pytest.raises(Stopped, match="open the producer"):
        until_kafka_answers("open the producer", hanging, stop, SITE, print, discarded.append)
    assert time.monotonic() - begun < 2
    assert discarded == []
    release.set()
    deadline = time.monotonic() + 5
    while not discarded and time.monotonic() < deadline:
        time.sleep(0.01)
    assert discarded == ["client"], "what the abandoned step made is closed"


def test_a_close_that_hangs_is_left_to_finish_on_its_own() -> None:
    release = threading.Event()
    begun = time.monotonic()

    def hang() -> None:
        release.wait(30)

    close_within(hang, 0.2, "leave the lease group")
    assert time.monotonic() - begun < 1
    release.set()


def test_an_unusable_clouds_yaml_entry_exits_2_before_kafka_is_asked(tmp_path: Path) -> None:
    """The entry is checked first: with no broker listening a poller would otherwise retry Kafka
    for ever, and a standby learn of its broken entry only when it takes over."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  elsewhere:\n    auth:\n      auth_url: http://127.0.0.1:1/v3\n")
    env = {
        "OS_CLIENT_CONFIG_FILE": str(clouds),
        "CASCADE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens there
    }
    started = time.monotonic()
    done = run("produce", "--site", "nowhere", env=env, timeout=30)
    assert done.returncode == 2, done.stderr[-800:]
    assert "clouds.yaml entry 'nowhere'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Kafka" not in done.stderr, done.stderr
    assert time.monotonic() - started < 20
