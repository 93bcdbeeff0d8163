"""SiteClock: the site's clock offset from the Date headers of its answers."""

from __future__ import annotations

import email.utils

import pytest

from connector.site.clock import HORIZON, STEP_CONFIRM, SiteClock


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


def test_one_outlying_answer_moves_nothing() -> None:
    local = [1_700_000_000.0]
    clock = SiteClock(local=lambda: local[0])
    for _ in range(20):
        local[0] += 0.61
        clock.observe(header(local[0] + 5.0))
    before = (clock.offset, clock.uncertainty)
    # A cache answers with its own Date an hour off, then a node with a clock a minute off.
    for wrong in (3600.0, -60.0):
        local[0] += 0.61
        clock.observe(header(local[0] + wrong))
        assert (clock.offset, clock.uncertainty) == before
        local[0] += 0.61
        clock.observe(header(local[0] + 5.0))
    assert clock.outliers == 2
    assert clock.offset == pytest.approx(5.0, abs=0.5)


def test_a_stepped_clock_is_followed_once_answers_in_a_row_agree_on_it() -> None:
    local = [1_700_000_000.0]
    clock = SiteClock(local=lambda: local[0])
    for _ in range(20):
        local[0] += 0.61
        clock.observe(header(local[0] + 5.0))
    # The site's clock is stepped back ten seconds: the old bounds disagree with the new
    # answers, and are dropped when STEP_CONFIRM of them in a row say so.
    for n in range(1, STEP_CONFIRM + 1):
        local[0] += 0.61
        clock.observe(header(local[0] - 5.0))
        expected = -5.0 if n == STEP_CONFIRM else 5.0
        assert clock.offset == pytest.approx(expected, abs=0.5)
    assert clock.uncertainty <= 0.5


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
