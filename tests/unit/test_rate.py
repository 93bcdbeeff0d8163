"""The rate limiter: no window holds more than the rate plus one small release."""

from __future__ import annotations

import pytest

from connector.top.rate import BURST_FRACTION, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def simulate(limiter: RateLimiter, clock: FakeClock, batch: int, seconds: float) -> list[float]:
    """Release `batch` records whenever allowed, with random-ish apply times; return the times at
    which each record was released."""
    times: list[float] = []
    end = clock.now + seconds
    step = 0
    while clock.now < end:
        clock.now += limiter.delay()
        clock.now += (step % 7) * 0.003  # the sink takes a varying while
        times.extend([clock.now] * batch)
        limiter.release(batch)
        step += 1
    return times


def max_in_window(times: list[float], width: float = 1.0) -> int:
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("rate", [100.0, 1000.0, 20_000.0])
def test_no_one_second_window_exceeds_rate_by_more_than_burst(rate: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, None, clock=clock)
    batch = limiter.max_release(10_000)
    assert batch == max(1, int(rate * BURST_FRACTION))
    times = simulate(limiter, clock, batch, seconds=10)
    assert max_in_window(times) <= rate * (1 + BURST_FRACTION)
    # and it is not needlessly slow: releases are spaced from the end of the previous apply, so
    # the achieved rate falls short by the apply time (here 9 ms on average per 50 ms release)
    assert len(times) / (times[-1] - times[0] + batch / rate) >= rate * 0.8


def test_batches_per_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 4.0, clock=clock)
    assert limiter.max_release(500) == 500
    releases = []
    for _ in range(20):
        clock.now += limiter.delay()
        releases.append(clock.now)
        limiter.release(500)
    assert max_in_window(releases) <= 4


def test_idle_time_is_not_saved_up() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100.0, None, clock=clock)
    limiter.release(5)
    clock.now += 3600
    assert limiter.delay() == 0
    limiter.release(5)
    assert limiter.delay() == pytest.approx(0.05)


def test_no_limit_never_waits() -> None:
    limiter = RateLimiter(None, None)
    limiter.release(1_000_000)
    assert limiter.delay() == 0


@pytest.mark.parametrize("rate, batches", [(0, None), (-1, None), (None, 0)])
def test_bad_limits(rate: float | None, batches: float | None) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        RateLimiter(rate, batches)
