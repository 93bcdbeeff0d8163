"""The site's clock as the poller sees it: the offset between the site's clock and ours.

Incremental filters compare the site's own timestamps with the watermark, so the watermark must
be a time on the site's clock. Every answer of the site carries a `Date` header (whole seconds):
the site's clock read somewhere between the request leaving and the answer arriving, rounded
down. Each answer so bounds the offset to an interval about a second wide; `SiteClock`
intersects the intervals of the answers of the last HORIZON seconds (as NTP's intersection does),
which pins the offset to within the requests' latency after a few dozen answers at different
phases of the second, and `now()` is our clock moved by the middle. A site whose clock runs a
minute ahead or behind then loses no change; `clock_skew` only has to cover what is left
(`uncertainty`) and the site's own delay between stamping a change and showing it.

An answer whose bounds miss the intersection is an outlier (a cache or a proxy that answered
with its own `Date`, a node of the site with a wrong clock) and moves nothing. Only when
STEP_CONFIRM answers in a row miss it and agree with each other was the site's clock stepped
(NTP): the estimate starts again from them.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

#: Seconds an answer's bounds on the offset are kept: enough answers to narrow them, and a site
#: clock that was stepped (NTP) is followed within this time at the latest.
HORIZON = 120.0
#: Answers kept at most within the horizon.
KEPT = 512
#: Answers in a row that disagree with the estimate, and agree with each other, that mean the
#: site's clock was stepped (fewer are outliers).
STEP_CONFIRM = 3


class SiteClock:
    """The latest measured offset of a site's clock from ours (seconds, site minus local)."""

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self._lock = threading.Lock()
        self._offset = 0.0
        self._uncertainty = 0.5
        self._measured = False
        #: (received, lowest offset, highest offset) per recent answer that agrees
        self._bounds: deque[tuple[float, float, float]] = deque(maxlen=KEPT)
        #: the answers since the last agreeing one, while they agree with each other
        self._disagreeing: list[tuple[float, float, float]] = []
        #: answers that moved nothing when they came (outliers, and the start of a step)
        self.outliers = 0

    def __repr__(self) -> str:
        return (
            f"SiteClock(offset={self._offset:+.3f}s ±{self._uncertainty:.3f}s, "
            f"measured={self._measured}, outliers={self.outliers})"
        )

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    @property
    def uncertainty(self) -> float:
        """How far the true offset may be from `offset`, in seconds (half a second before any
        answer: the header's rounding)."""
        with self._lock:
            return self._uncertainty

    def observe(
        self, date_header: str | None, received: float | None = None, elapsed: float = 0.0
    ) -> None:
        """Take the bounds on the offset from an answer's `Date` header, received at `received`
        (our clock) `elapsed` seconds after its request left; a missing or unreadable header
        changes nothing."""
        if not date_header:
            return
        try:
            sent = email.utils.parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        at = self._local() if received is None else received
        # The site read its clock at a time in [at - elapsed, at] of ours and rounded it down
        # to the second: its clock then was in [sent, sent + 1).
        lowest, highest = sent - at, sent + 1 - (at - max(0.0, elapsed))
        answer = (at, lowest, highest)
        with self._lock:
            bounds = self._bounds
            while bounds and bounds[0][0] < at - HORIZON:
                bounds.popleft()
            low, high = _intersection([*bounds, answer])
            if low <= high:
                bounds.append(answer)
                self._disagreeing.clear()
            else:
                self._disagreeing.append(answer)
                step_low, step_high = _intersection(self._disagreeing)
                if step_low > step_high:  # they disagree with each other too: start over
                    self._disagreeing[:] = [answer]
                if len(self._disagreeing) < STEP_CONFIRM:
                    self.outliers += 1
                    return
                # The clock was stepped: start again from the answers since.
                bounds.clear()
                bounds.extend(self._disagreeing)
                self._disagreeing.clear()
                low, high = _intersection(bounds)
            self._offset = (low + high) / 2
            self._uncertainty = (high - low) / 2
            self._measured = True

    def now(self) -> float:
        """Our clock moved by the offset: the site's time now."""
        return self._local() + self.offset


def _intersection(bounds: Iterable[tuple[float, float, float]]) -> tuple[float, float]:
    """(low, high) of the offsets every answer allows; low > high when they disagree."""
    items = list(bounds)
    return max(b[1] for b in items), min(b[2] for b in items)
