"""When the top consumer's next sink call may go: the rate limit, a sink's "slow down", and
reading's share of the thread.

`CallPacer` holds the calls, never the reading: the loop polls for as long as `hold` says, and
the time it so waited counts as rate-limited or as backpressure. While there is reading to do,
reading gets at least READ_SHARE of the thread, so windows keep filling while a slow sink applies
(and the top layer, the scarce one, gets the rest). It also keeps the most changes applied within
any one second.
"""

from __future__ import annotations

import time
from collections import deque

from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.rate import RateLimiter

#: The least share of the thread reading gets while sink calls are also due.
READ_SHARE = 0.25


class CallPacer:
    """Paces the sink calls of one loop under `limiter`."""

    def __init__(self, limiter: RateLimiter, metrics: ConsumerMetrics) -> None:
        self._limiter = limiter
        self._metrics = metrics
        # Exported so a dashboard can draw rows/s against the limit.
        metrics.max_rate.set(limiter.max_rate or 0)
        self._backoff_until = 0.0
        self._last_call_end = 0.0
        self._last_call_took = 0.0
        self._released: deque[tuple[float, int]] = deque()
        self.max_per_second = 0  #: the most changes applied within any one second

    def hold(self, now: float) -> float:
        """Seconds until the next call may go (0 or less: now)."""
        return max(self._limiter.delay(), self._backoff_until - now)

    def waited(self, seconds: float, since: float) -> None:
        """The loop polled `seconds` holding a call it was told at `since` to hold."""
        if since < self._backoff_until:
            self._metrics.backpressure_seconds.inc(seconds)
        else:
            self._metrics.rate_limited_seconds.inc(seconds)

    def may_call(self, reading: bool) -> bool:
        """Whether the next sink call may go now; `reading`: there is reading to do too."""
        now = time.monotonic()
        reading_due = self._last_call_took * READ_SHARE / (1 - READ_SHARE)
        if reading and now - self._last_call_end < reading_due:
            return False
        return now >= self._backoff_until and self._limiter.delay() <= 0

    def back_off(self, seconds: float) -> None:
        """The sink asked to slow down: no call for `seconds`."""
        self._backoff_until = time.monotonic() + seconds

    def applied(self, changes: int, started: float) -> None:
        """A call begun at `started` applied `changes` just now."""
        now = self._last_call_end = time.monotonic()
        self._last_call_took = now - started
        self._metrics.apply_seconds.observe(self._last_call_took)
        self._limiter.release(changes)
        self._released.append((now, changes))
        while now - self._released[0][0] > 1.0:
            self._released.popleft()
        in_window = sum(n for _t, n in self._released)
        if in_window > self.max_per_second:
            self.max_per_second = in_window
            self._metrics.max_per_second.set(in_window)
