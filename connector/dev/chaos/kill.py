"""Chaos: the top consumer SIGKILLed again and again while updates stream in.

A publisher writes `updates` status records over `keys` objects (sequence 1..N, so the truth is
known: each key's last record), paced to span the kills. Meanwhile `cascade-connector consume`
is started and SIGKILLed `kills` times, each at a random point within 2 s of its first apply.
A last consumer runs with `--until-idle`. Must hold: the sink equals the truth, and the
regression trigger saw no row go back to a lower sequence, ever.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import sqlalchemy as sa

from connector.config import KafkaSettings
from connector.dev.chaos import Outcome
from connector.dev.chaos.harness import ChaosRun, SinkRows, wait_for, watch_regressions
from connector.kafka.producer import Producer
from connector.kafka.topics import ensure_site_topic
from connector.records.codec import Codec
from connector.records.messages import to_message
from connector.records.model import StatusRecord

SITE = "kill"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def publish_paced(
    kafka: KafkaSettings,
    topic: str,
    updates: int,
    keys: int,
    rate: float,
    stop: threading.Event,
    failures: list[str],
) -> None:
    """Publish `updates` records round-robin over `keys` at about `rate` per second."""
    codec, producer = Codec(), Producer(kafka)

    def on_delivery(key: str, err: object, _partition: int, _offset: int) -> None:
        if err is not None:
            failures.append(f"{key}: {err}")

    started = time.monotonic()
    for i in range(updates):
        if stop.is_set():
            return
        record = StatusRecord(
            SITE, "server", f"vm-{i % keys}", f"S{i + 1}", i + 1, T0 + timedelta(seconds=i)
        )
        message = to_message(record, codec)
        producer.produce(topic, message.key, message.value, on_delivery)
        ahead = (i + 1) / rate - (time.monotonic() - started)
        if ahead > 0.05:
            time.sleep(ahead)
    producer.flush(120)


def consumer_kills(
    bootstrap: str,
    sink_url: str,
    workdir: Path,
    *,
    updates: int = 100_000,
    keys: int = 10_000,
    kills: int = 20,
    seed: int = 1,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Run the scenario; see the module docstring."""
    outcome = Outcome("consumer SIGKILLed")
    rng = random.Random(seed)
    names = ChaosRun()
    kafka = names.kafka(bootstrap)
    topic = f"{names.prefix}.{SITE}"
    ensure_site_topic(kafka, SITE)
    watch_regressions(sink_url)
    rows = SinkRows(sink_url)
    children = names.children(workdir, bootstrap, sink_url)
    # Static membership: a restarted consumer takes its killed predecessor's place at once,
    # instead of waiting out the session timeout.
    consume = ["consume", "-X", f"group.instance.id={names.group}", "-X", "session.timeout.ms=6000"]
    # Paced so that publishing lasts about as long as the kills (start-up, then up to 2 s).
    rate = max(1000.0, updates / (kills * 4.0 + 5))
    stop, failures = threading.Event(), list[str]()
    publisher = threading.Thread(
        target=publish_paced, args=(kafka, topic, updates, keys, rate, stop, failures)
    )
    started = time.monotonic()
    publisher.start()
    try:
        productive = 0
        for k in range(kills):
            life_started = datetime.now(UTC)
            children.start("consumer", *consume, "--batch-size", "500")
            # A random point once this consumer applies: killing it while it still starts up
            # would test nothing.
            wait_for(partial(_applied_since, rows, life_started), 60.0, every=0.05)
            time.sleep(rng.uniform(0.0, 2.0))
            if not children.alive("consumer"):
                outcome.problems.append(
                    f"consumer exited by itself before kill {k + 1}: "
                    f"{children.log_tail('consumer')}"
                )
                children.wait("consumer", 10)
                continue
            children.kill("consumer")
            productive += _applied_since(rows, life_started) > 0
            echo(f"  kill {k + 1}/{kills} at {time.monotonic() - started:.1f} s")
        echo(f"  kills done at {time.monotonic() - started:.1f} s; waiting for the publisher")
        publisher.join()
        published_at = time.monotonic()
        children.start("consumer", *consume, "--until-idle")
        code = children.wait("consumer", 600)
        if code != 0:
            outcome.problems.append(
                f"the last consumer (--until-idle) ended with {code}: "
                f"{children.log_tail('consumer')}"
            )
        finished = time.monotonic()
        echo(f"  caught up in {finished - published_at:.1f} s")
        expected = {f"{SITE}/server/vm-{k}": _last_sequence(k, updates, keys) for k in range(keys)}
        actual = rows.sequences()
        wrong = [key for key in expected if actual.get(key) != expected[key]]
        regressions = rows.regressions()
        if failures:
            outcome.problems.append(f"{len(failures)} records not published: {failures[:3]}")
        if wrong or len(actual) != len(expected):
            outcome.problems.append(
                f"sink differs from the truth: {len(wrong)} keys wrong, "
                f"{len(actual)} rows for {len(expected)} keys; e.g. "
                + ", ".join(f"{k} has {actual.get(k)}, expected {expected[k]}" for k in wrong[:3])
            )
        if regressions:
            outcome.problems.append(f"{len(regressions)} rows regressed, e.g. {regressions[:3]}")
        outcome.figures.update(
            {
                "updates": updates,
                "keys": keys,
                "kills": kills,
                "kills after the consumer had applied rows": productive,
                "publish rate (records/s)": round(rate),
                "seconds publishing and killing": published_at - started,
                "seconds for the last consumer to catch up": finished - published_at,
                "keys equal to the truth": len(expected) - len(wrong),
                "regressions": len(regressions),
            }
        )
    finally:
        stop.set()
        publisher.join()
        children.stop_all()
        rows.close()
    return outcome


def _last_sequence(key: int, updates: int, keys: int) -> int:
    """The sequence of the last record published for `vm-<key>` (record i has sequence i+1)."""
    last = (updates - 1) - ((updates - 1 - key) % keys)
    return last + 1


def _applied_since(rows: SinkRows, since: datetime) -> int:
    query = sa.text("SELECT count(*) FROM resource_status WHERE applied_at > :since")
    with rows.engine.connect() as conn:
        return int(conn.execute(query, {"since": since}).scalar_one())
