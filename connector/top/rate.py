"""The rate limiter: records per second and batches per second, with no burst credit.

A release is one sink call of n records (changes, after the batch kept the last per key). It is
a virtual-scheduling limiter (GCRA): each release moves a theoretical time forward by
n / max_rate (and by 1 / max_batches_per_second), and the next release waits until that time.
The consumer accounts a call when the sink has applied it, so applied calls are spaced by at
least that much, whatever the sink's apply time; idle time is not saved up. A one-second window
therefore sees at most the rate plus the one release that straddles its edge, and releases are
kept small (see `max_release`) so that edge stays within a few percent of the rate. The price:
the achieved rate falls short of the limit by the apply time of each call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: A release is at most this fraction of a second's worth of records, so that any one-second
#: window holds at most (1 + BURST_FRACTION) * max_rate records.
BURST_FRACTION = 0.05


class RateLimiter:
    """Tells the consumer how long to wait before it may release the next batch."""

    def __init__(
        self,
        max_rate: float | None,
        max_batches_per_second: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rate is not None and max_rate <= 0:
            raise ValueError(f"max_rate must be > 0, got {max_rate}")
        if max_batches_per_second is not None and max_batches_per_second <= 0:
            raise ValueError(f"max_batches_per_second must be > 0, got {max_batches_per_second}")
        self.max_rate = max_rate
        self.max_batches_per_second = max_batches_per_second
        self._clock = clock
        self._records_tat = -math.inf
        self._batches_tat = -math.inf

    def max_release(self, batch_size: int) -> int:
        """The most records of `batch_size` one sink call may take under this limit."""
        if self.max_rate is None:
            return batch_size
        return max(1, min(batch_size, int(self.max_rate * BURST_FRACTION)))

    def delay(self) -> float:
        """Seconds until the next release may happen (0 if now)."""
        now = self._clock()
        return max(0.0, self._records_tat - now, self._batches_tat - now)

    def release(self, records: int) -> None:
        """Account for `records` records just applied."""
        now = self._clock()
        if self.max_rate is not None:
            self._records_tat = max(now, self._records_tat) + records / self.max_rate
        if self.max_batches_per_second is not None:
            self._batches_tat = max(now, self._batches_tat) + 1.0 / self.max_batches_per_second

    def __repr__(self) -> str:
        return (
            f"RateLimiter(max_rate={self.max_rate}, "
            f"max_batches_per_second={self.max_batches_per_second}, delay={self.delay():.3f})"
        )
