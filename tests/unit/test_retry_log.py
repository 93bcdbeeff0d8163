"""A commit retried through a broker outage: the first failure, then a line every N s, then
the recovery, instead of a line per try."""

from __future__ import annotations

import logging

import pytest

from connector.kafka.transactions import RetryLog


def test_first_failure_then_a_summary_every_n_seconds_then_the_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    retries = RetryLog("commit of site-a", every=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="connector.kafka.transactions")
    for _ in range(25):  # a try a second for 25 s
        retries.failed("broker down")
        now[0] += 1.0
    retries.succeeded()
    retries.succeeded()  # nothing more to say
    assert [r.getMessage() for r in caplog.records] == [
        "commit of site-a failed, retrying: broker down",
        "commit of site-a still failing after 10 s (11 failed tries): broker down",
        "commit of site-a still failing after 20 s (21 failed tries): broker down",
        "commit of site-a succeeded after 25.0 s and 25 failed tries",
    ]
    caplog.clear()
    retries.failed("again")  # a new outage starts its own count
    assert [r.getMessage() for r in caplog.records] == ["commit of site-a failed, retrying: again"]
