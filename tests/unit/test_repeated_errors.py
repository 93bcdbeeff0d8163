"""Client errors during an outage: one line per distinct error, then counts, then a line when it
is over, instead of a line per occurrence (librdkafka repeats them hundreds of times a second)."""

from __future__ import annotations

import logging

import pytest

from connector.kafka.client import RepeatedErrors

REFUSED = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"


def test_one_line_per_distinct_error_then_counts_then_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    errors = RepeatedErrors(
        logging.getLogger("test.errors"),
        every=30.0,
        quiet=30.0,
        clock=lambda: now[0],
        background=False,
    )
    caplog.set_level(logging.WARNING, logger="test.errors")
    for i in range(6000):  # 100 a second for 60 s, from two clients' error_cb and log alike
        now[0] = i / 100
        errors.report(logging.WARNING, f"{REFUSED} (after {i % 7}ms in state CONNECT)", "A: ")
        errors.report(logging.WARNING, f"[thrd:main]: {REFUSED}", "B: ")
        if i % 100 == 0:
            errors.report(logging.WARNING, "1/1 brokers are down")
        errors.sweep()
    now[0] += 29.0
    errors.sweep()
    assert len(caplog.records) == 4  # two errors first seen, and a count each at 30 s
    now[0] += 2.0
    errors.sweep()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"A: {REFUSED}",
        "1/1 brokers are down",
        f"A: {REFUSED} (repeated 6000 times in the last 30 s, 6001 since it began 30 s ago)",
        "1/1 brokers are down (repeated 30 times in the last 30 s, 31 since it began 30 s ago)",
        f"no longer seen (12000 times over 60 s): A: {REFUSED}",
        "no longer seen (60 times over 59 s): 1/1 brokers are down",
    ]
    caplog.clear()
    errors.report(logging.WARNING, REFUSED)  # a new outage: said again at once
    assert [r.getMessage() for r in caplog.records] == [REFUSED]
