"""SIGTERM ends a top consumer within 10 s with its broker frozen (SIGSTOP: connections stay
open, nothing answers) while it applies, commits and refreshes its lag gauge: nothing on its
way out waits on the broker without a deadline (docs/reliability.md, "Stopping"). Its own
broker: the tests' private one, thawed at the end for the next test that needs it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from connector.dev.chaos.harness import SinkRows
from connector.dev.local_kafka import LocalKafka
from tests.support import wait_for
from tests.support.top import consume_process

#: Seconds within which SIGTERM must end the consumer.
LIMIT = 10.0
#: Seconds the broker stays frozen before the SIGTERM: past the clients' socket timeout (5 s),
#: so a commit and a lag refresh are waiting for answers that do not come, short of the group
#: session (10 s).
FROZEN_FOR = 7.0


def test_sigterm_ends_a_consumer_within_10s_while_its_broker_is_frozen(
    private_kafka: LocalKafka, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    sink = f"sqlite:///{tmp_path / 'top.sqlite'}"
    broker = private_kafka.pid()
    assert broker is not None
    # Small windows at a limited rate: a window is committed every turn or two.
    children = consume_process(
        private_kafka.bootstrap, unique_name, tmp_path, sink,
        "--max-rate", "50", "--batch-size", "10", records=2000, partitions=4,
    )  # fmt: skip
    rows = SinkRows(sink)
    try:
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
