"""SIGTERM ends a top consumer within 10 s with its broker frozen (SIGSTOP: connections stay
open, nothing answers) while it applies, commits and refreshes its lag gauge: nothing on its
way out waits on the broker without a deadline (docs/reliability.md, "Stopping"). Its own
broker: the tests' private one, thawed at the end for the next test that needs it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connector.dev.chaos.harness import Children, SinkRows
from connector.dev.local_kafka import LocalKafka
from connector.records.model import StatusRecord
from tests.support import wait_for
from tests.support.kafka import create_topic, publish

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: Seconds within which SIGTERM must end the consumer.
LIMIT = 10.0
#: Seconds the broker stays frozen before the SIGTERM: past the clients' socket timeout (5 s),
#: so a commit and a lag refresh are waiting for answers that do not come, short of the group
#: session (10 s).
FROZEN_FOR = 7.0


def test_sigterm_ends_a_consumer_within_10s_while_its_broker_is_frozen(
    private_kafka: LocalKafka, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    bootstrap = private_kafka.bootstrap
    prefix = unique_name("status")
    create_topic(bootstrap, f"{prefix}.east", partitions=4)
    publish(
        bootstrap,
        f"{prefix}.east",
        (
            StatusRecord("east", "server", f"vm-{i}", "ACTIVE", i + 1, T0 + timedelta(seconds=i))
            for i in range(2000)
        ),
    )
    sink = f"sqlite:///{tmp_path / 'top.sqlite'}"
    children = Children(
        tmp_path,
        {
            "CASCADE_KAFKA_BOOTSTRAP": bootstrap,
            "CASCADE_KAFKA_TOPIC_PREFIX": prefix,
            "CASCADE_CONSUMER_GROUP": unique_name("group"),
            "CASCADE_CONSUMER_DEAD_LETTER_TOPIC": unique_name("dlq"),
            "CASCADE_SINK_URL": sink,
        },
    )
    rows = SinkRows(sink)
    broker = private_kafka.pid()
    assert broker is not None
    try:
        # Small windows at a limited rate: a window is committed every turn or two.
        children.start("consumer", "consume", "--max-rate", "50", "--batch-size", "10")
        wait_for(lambda: len(rows.statuses()) >= 50, 90, "the consumer to apply", every=0.1)
        os.kill(broker, signal.SIGSTOP)
        try:
            time.sleep(FROZEN_FOR)  # the outage itself, not a wait for a condition
            assert children.alive("consumer"), children.log_tail("consumer")
            took = children.terminate("consumer", 30)
        finally:
            os.kill(broker, signal.SIGCONT)
        assert took is not None and took < LIMIT, (took, children.log_tail("consumer", 40))
        assert len(rows.statuses()) < 2000, "the consumer was not applying when frozen"
    finally:
        children.stop_all()
        rows.close()
