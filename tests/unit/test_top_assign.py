"""The top consumer's assignment path: a read of the committed offsets that times out (the broker
busy with a rebalance) is retried from the loop with a doubling backoff, logged naming the
partitions, and never ends the loop or holds a stop. The real-broker version, with librdkafka's
own timeout, is in tests/integration/test_top_consumer.py; that what the read found is what a
commit is checked against, in test_top_loop.py."""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from connector.top import offsets as top
from tests.support import wait_for
from tests.support.fake_group import LOOP_TIMEOUT, FakeGroupConsumer, top_consumer
from tests.support.top import consuming

ASSIGNED = [("site.a", 0), ("site.a", 1)]


def test_committed_offsets_that_time_out_are_read_again_with_a_doubling_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(top, "ASSIGN_RETRY_SECONDS", (0.2, 0.5))
    group = FakeGroupConsumer(ASSIGNED, committed={ASSIGNED[0]: 7}, read_failures=3)
    caplog.set_level(logging.WARNING, logger=top.__name__)
    loop = top_consumer(group)
    with consuming(loop):
        wait_for(lambda: len(group.reads) == 4, LOOP_TIMEOUT, "the fourth read")
    assert group.closed
    assert len(group.reads) == 4, "read again after a read that succeeded"
    assert all(read[1] == frozenset(ASSIGNED) for read in group.reads)
    assert all(read[2] == top.ASSIGN_READ_TIMEOUT for read in group.reads)
    times = [read[0] for read in group.reads]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 0.2 s, doubled to 0.4 s, then held at the 0.5 s cap; each a little later (one turn of
    # the loop, longer on a loaded machine), never sooner.
    backoffs = [0.2, 0.4, 0.5]
    assert all(b <= g < b + 1.0 for g, b in zip(gaps, backoffs, strict=True)), gaps
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all("site.a[0], site.a[1]" in w and "Local: Timed out" in w for w in warnings)
    assert [w.rsplit(" ", 1)[1] for w in warnings] == ["0.2s", "0.4s", "0.5s"]


def test_a_stop_during_the_backoff_ends_the_loop_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(top, "ASSIGN_RETRY_SECONDS", (60.0, 60.0))
    group = FakeGroupConsumer(ASSIGNED, read_failures=1000)
    loop = top_consumer(group)
    with consuming(loop):
        wait_for(lambda: group.reads, LOOP_TIMEOUT, "the first read")
        stopping = time.monotonic()
        loop.stop()
    assert time.monotonic() - stopping < 1.0
    assert group.closed
    assert len(group.reads) == 1, "read again before its backoff was over"
