"""`cascade-connector consume` as a process: SIGKILLed mid-run and restarted, it converges to the
same state, and no row ever goes back to an older status (a database trigger watches)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.request import urlopen

import sqlalchemy as sa

from connector.dev import free_port
from connector.records.model import StatusRecord
from connector.sinks import open_sink
from tests.support.kafka import committed_offsets, create_topic, end_offsets, publish

CLI = [sys.executable, "-m", "connector"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)

REGRESSION_WATCH = [
    "CREATE TABLE regressions (key TEXT, old_sequence INTEGER, new_sequence INTEGER)",
    """CREATE TRIGGER no_going_back BEFORE UPDATE ON resource_status
       WHEN NEW.sequence < OLD.sequence
       BEGIN INSERT INTO regressions VALUES (NEW.id, OLD.sequence, NEW.sequence); END""",
]


def test_sigkill_and_restart_converge_without_regressions(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    prefix, group = unique_name("status"), unique_name("group")
    topic = f"{prefix}.east"
    create_topic(kafka_bootstrap, topic, partitions=3)
    keys, total = 5000, 60_000
    publish(
        kafka_bootstrap,
        topic,
        (
            StatusRecord(
                site="east",
                kind="server",
                id=f"vm-{i % keys}",
                status=f"S{i + 1}",
                sequence=i + 1,
                observed_at=T0 + timedelta(milliseconds=i),
            )
            for i in range(total)
        ),
    )
    db = tmp_path / "top.sqlite"
    url = f"sqlite:///{db}"
    open_sink(url).close()  # creates the tables, so the trigger can be put on them
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in REGRESSION_WATCH:
            conn.execute(sa.text(statement))

    env = {
        **os.environ,
        "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CASCADE_KAFKA_TOPIC_PREFIX": prefix,
        "CASCADE_CONSUMER_GROUP": group,
        "CASCADE_CONSUMER_DEAD_LETTER_TOPIC": unique_name("dlq"),
        "CASCADE_SINK_URL": url,
    }
    # Slow enough (10,000 records/s at most, small batches) to be killed in the middle.
    # A killed member stays in the group until its session times out: keep that short.
    session = ["-X", "session.timeout.ms=6000"]
    metrics_port = free_port()
    first = subprocess.Popen(
        [
            *CLI,
            "consume",
            *session,
            "--max-rate",
            "10000",
            "--batch-size",
            "500",
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120  # the first window reads the whole backlog first
        while rows(engine) < keys // 2:
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            assert time.monotonic() < deadline, "the first consumer applied nothing"
            time.sleep(0.05)
        metrics = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        health = json.loads(urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10).read())
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert committed_offsets(kafka_bootstrap, group, topic) != end_offsets(
        kafka_bootstrap, topic
    ), "killed too late: the first run had already finished"

    assert health["healthy"] is True
    # Killed in the middle of a window: applied in part, nothing of it committed (records are
    # counted once their window is committed).
    assert sample(metrics, "cascade_consumer_windows_total") >= 1
    assert sample(metrics, "cascade_consumer_rows_applied_total") >= keys // 2
    assert sample(metrics, 'cascade_consumer_batches_total{outcome="applied"}') >= 1
    assert sample(metrics, "cascade_consumer_batch_apply_seconds_count") >= 1
    assert sample(metrics, 'cascade_consumer_site_pending_changes{site="east"}') > 0

    second = subprocess.run(
        [*CLI, "consume", *session, "--batch-size", "700", "--until-idle"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]

    with engine.connect() as conn:
        applied = conn.execute(sa.text("SELECT id, sequence FROM resource_status")).all()
        state = {row.id: row.sequence for row in applied}
        regressions = conn.execute(sa.text("SELECT * FROM regressions")).all()
    assert regressions == []
    assert state == {f"vm-{k}": total - keys + k + 1 for k in range(keys)}
    assert committed_offsets(kafka_bootstrap, group, topic) == end_offsets(kafka_bootstrap, topic)


def sample(metrics: str, name: str) -> float:
    """The value of one sample in Prometheus text format."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM resource_status")).scalar_one())
