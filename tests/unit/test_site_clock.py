"""SiteClock: the site's clock offset from the Date headers of its answers."""

from __future__ import annotations

import email.utils

import pytest

from connector.site.clock import HORIZON, SiteClock


def header(site_time: float) -> str:
    return email.utils.formatdate(site_time, usegmt=True)  # rounded down to the second


def test_answers_at_different_phases_of_the_second_pin_the_offset() -> None:
    local = [1_700_000_000.0]
    clock = SiteClock(local=lambda: local[0])
    true_offset = 42.37
    assert clock.uncertainty == 0.5
    clock.observe(header(local[0] + true_offset), elapsed=0.002)
    assert clock.uncertainty == pytest.approx(0.501)
    for step in range(40):
        local[0] += 0.77 + step * 0.013  # answers at varied phases of the second
        clock.observe(header(local[0] + true_offset), elapsed=0.002)
    assert abs(clock.offset - true_offset) <= clock.uncertainty
    assert clock.uncertainty < 0.05, "from half a second to tens of milliseconds"
    assert clock.now() == pytest.approx(local[0] + true_offset, abs=0.05)


def test_a_stepped_clock_is_followed_at_once() -> None:
    local = [1_700_000_000.0]
    clock = SiteClock(local=lambda: local[0])
    for _ in range(20):
        local[0] += 0.61
        clock.observe(header(local[0] + 5.0))
    # The site's clock is stepped back ten seconds: the old bounds disagree with the new
    # answer, and are dropped.
    local[0] += 0.61
    clock.observe(header(local[0] - 5.0))
    assert clock.offset == pytest.approx(-5.0, abs=0.5)
    assert clock.uncertainty == pytest.approx(0.5)


def test_old_answers_leave_after_the_horizon_and_bad_headers_change_nothing() -> None:
    local = [1_700_000_000.0]
    clock = SiteClock(local=lambda: local[0])
    for _ in range(20):
        local[0] += 0.61
        clock.observe(header(local[0]))
    assert clock.uncertainty < 0.1
    local[0] += HORIZON + 1
    clock.observe(header(local[0]))
    assert clock.uncertainty == pytest.approx(0.5), "only the latest answer is within reach"
    before = (clock.offset, clock.uncertainty)
    clock.observe("not a date")
    clock.observe(None)
    assert (clock.offset, clock.uncertainty) == before
