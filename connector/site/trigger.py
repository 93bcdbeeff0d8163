"""Early polls: the wait between a kind's polls, cut short when a notification says it changed.

A `PollTrigger` replaces the poller's plain wait. `fire()` (from the notification listener)
arms it: the poll starts `debounce` seconds later, and every notification until then rides on
that poll. A notification that arrives while a poll runs arms the next one, because the running
poll may have listed before the change. A triggered poll that found more than `storm_rate`
objects changed per second (what it listed over the time since the previous poll began, plus the
clock-skew overlap every incremental listing repeats) means a storm: triggers pause for one
interval, since an interval poll collapses a storm's flaps best and repeated early polls would
only list them again. The interval polls and resyncs go on as before, every interval: a trigger
adds early polls between them (which list less: connector.site.poller) and never puts one off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Longest stretch the waiting poller sleeps on the trigger before looking at `stop` again.
_SLICE = 0.25


class PollTrigger:
    """The wake-up of one kind's poller. Thread-safe; one poller waits on it."""

    def __init__(
        self,
        debounce: float,
        interval: float,
        overlap: float,
        storm_rate: float,
        listed: Callable[[], float],
        on_poll: Callable[[], None] = lambda: None,
        on_debounced: Callable[[], None] = lambda: None,
        on_storm: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.debounce = debounce
        self.interval = interval
        #: seconds every incremental listing reaches back before the previous poll
        self.overlap = overlap
        self.storm_rate = storm_rate
        #: objects the kind's polls have listed so far (a counter that only grows)
        self._listed = listed
        self._on_poll = on_poll
        self._on_debounced = on_debounced
        self._on_storm = on_storm
        self._clock = clock
        self._lock = threading.Lock()
        self._fired = threading.Event()
        #: when the armed poll is due; None when not armed
        self._due: float | None = None
        self._paused_until = 0.0
        #: when the last poll began, and `listed()` then
        self._began: float | None = None
        self._listed_at_start = 0.0
        #: whether the last poll was a triggered one, and the seconds its listing covered
        self._triggered = False
        self._covered = 0.0

    def __repr__(self) -> str:
        return f"PollTrigger(due={self._due}, paused_until={self._paused_until})"

    def fire(self) -> None:
        """A notification for this kind arrived."""
        with self._lock:
            if self._due is not None:
                self._on_debounced()
                return
            self._due = max(self._clock() + self.debounce, self._paused_until)
        self._fired.set()

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Wait `timeout` seconds, until an armed poll is due, or until `stop`; True when the
        next poll is a triggered one."""
        self._after_poll()
        deadline = self._clock() + timeout
        while not stop.is_set():
            now = self._clock()
            if now >= deadline:
                # The interval poll, never put off by early ones: it lists whatever was
                # notified so far too.
                with self._lock:
                    self._due = None
                    self._fired.clear()
                self._poll_begins(triggered=False)
                return False
            with self._lock:
                due = self._due
            if due is not None and due <= deadline:
                if due > now:
                    stop.wait(due - now)
                    continue
                with self._lock:
                    self._due = None
                    self._fired.clear()
                self._poll_begins(triggered=True)
                self._on_poll()
                return True
            self._fired.wait(min(_SLICE, deadline - now))
            self._fired.clear()
        return False

    def _poll_begins(self, triggered: bool) -> None:
        now = self._clock()
        self._covered = (now - self._began if self._began is not None else 0.0) + self.overlap
        self._began = now
        self._listed_at_start = self._listed()
        self._triggered = triggered

    def _after_poll(self) -> None:
        if not self._triggered:
            return
        self._triggered = False
        rate = (self._listed() - self._listed_at_start) / max(self._covered, 1e-3)
        if rate > self.storm_rate:
            with self._lock:
                self._paused_until = self._clock() + self.interval
                if self._due is not None:
                    self._due = max(self._due, self._paused_until)
            self._on_storm()
