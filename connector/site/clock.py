"""The site's clock as the poller sees it: the offset between the site's clock and ours.

Incremental filters compare the site's own timestamps with the watermark, so the watermark must
be a time on the site's clock. Every answer of the site carries a `Date` header (whole seconds);
`SiteClock` keeps the offset the latest one showed, and `now()` is our clock moved by it. A site
whose clock runs a minute ahead or behind then loses no change; `clock_skew` only has to cover
the header's rounding and the request's latency.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable


class SiteClock:
    """The latest measured offset of a site's clock from ours (seconds, site minus local)."""

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self._lock = threading.Lock()
        self._offset = 0.0
        self._measured = False

    def __repr__(self) -> str:
        return f"SiteClock(offset={self._offset:+.1f}s, measured={self._measured})"

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    def observe(self, date_header: str | None, received: float | None = None) -> None:
        """Take the offset from an answer's `Date` header, received at `received` (our clock);
        a missing or unreadable header changes nothing."""
        if not date_header:
            return
        try:
            sent = email.utils.parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        at = self._local() if received is None else received
        # The header is rounded down to the second: the site's time was half a second later
        # on average.
        with self._lock:
            self._offset = sent + 0.5 - at
            self._measured = True

    def now(self) -> float:
        """Our clock moved by the offset: the site's time now."""
        return self._local() + self.offset
