"""Early polls: the wait between a kind's polls, cut short when a notification says it changed.

A `PollTrigger` replaces the poller's plain wait. `fire()` (from the notification listener)
arms it: the poll starts `debounce` seconds later, and every notification until then rides on
that poll. A notification that arrives while a poll runs arms the next one, because the running
poll may have listed before the change; one stamped before a finished poll began (less the early
polls' overlap) is no news, since that poll listed its change: in a storm the services'
notifications lag behind by up to a minute, and each of them woke a poll that listed nothing.
A poll that runs long (an interval poll at a busy site lists most of it) lets a due early poll
go between two of its pages (`take_due`), so notified changes do not wait for it.

A triggered poll whose listing shows more than `storm_share` of the kind's objects changed per
second (the objects it listed, over the span of the times the site stamped them) means a storm:
a site restart changes most objects at once, while steady churn, however busy, changes a small
share a second. Triggers then pause for one interval, since an interval poll collapses a
storm's flaps best and repeated early polls would only list them again. The span is read from
the listing, not from when the polls ran: a slow early poll covers seconds of steady churn, and
the first early poll after a quiet spell covers everything since the poll before it; by poll
times the one looked like a storm and the other did not. (The notification rate is no signal
either: in a storm the notifications lag behind and arrive spread out, at the rate the services
manage to send them.)

The interval polls and resyncs go on as before, every interval: a trigger adds early polls
between them (which list less: connector.site.poller) and never puts one off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Longest stretch the waiting poller sleeps on the trigger before looking at `stop` again.
_SLICE = 0.25
#: The storm check counts a kind as this many objects at least: on a small kind a handful of
#: changes is a large share without meaning a restart.
STORM_FLOOR = 100


class PollTrigger:
    """The wake-up of one kind's poller. Thread-safe; one poller waits on it."""

    def __init__(
        self,
        debounce: float,
        interval: float,
        storm_share: float,
        on_poll: Callable[[], None] = lambda: None,
        on_debounced: Callable[[int], None] = lambda n: None,
        on_stale: Callable[[int], None] = lambda n: None,
        on_storm: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.debounce = debounce
        self.interval = interval
        self.storm_share = storm_share
        self._on_poll = on_poll
        self._on_debounced = on_debounced
        self._on_stale = on_stale
        self._on_storm = on_storm
        self._clock = clock
        self._lock = threading.Lock()
        self._fired = threading.Event()
        #: when the armed poll is due; None when not armed
        self._due: float | None = None
        self._paused_until = 0.0
        #: every change stamped before this (the site's clock) a finished poll listed
        self._listed_until = float("-inf")

    def __repr__(self) -> str:
        return f"PollTrigger(due={self._due}, paused_until={self._paused_until})"

    def fire(self, stamped: float | None = None, count: int = 1) -> None:
        """`count` notifications for this kind arrived, the newest stamped `stamped` (epoch
        seconds on the site's clock; None: not known)."""
        with self._lock:
            if stamped is not None and stamped < self._listed_until:
                self._on_stale(count)
                return
            if self._due is not None:
                self._on_debounced(count)
                return
            self._due = max(self._clock() + self.debounce, self._paused_until)
            if count > 1:
                self._on_debounced(count - 1)
        self._fired.set()

    def listed_until(self, stamp: float) -> None:
        """A poll finished that listed every change stamped before `stamp` (the site's clock):
        notifications about those are no news."""
        with self._lock:
            self._listed_until = max(self._listed_until, stamp)

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Wait `timeout` seconds, until an armed poll is due, or until `stop`; True when the
        next poll is a triggered one."""
        deadline = self._clock() + timeout
        while not stop.is_set():
            now = self._clock()
            if now >= deadline:
                # The interval poll, never put off by early ones: it lists whatever was
                # notified so far too.
                with self._lock:
                    self._due = None
                    self._fired.clear()
                return False
            with self._lock:
                due = self._due
            if due is not None and due <= deadline:
                if due > now:
                    stop.wait(due - now)
                    continue
                if self.take_due():
                    return True
                continue  # a storm put it off meanwhile
            self._fired.wait(min(_SLICE, deadline - now))
            self._fired.clear()
        return False

    def take_due(self) -> bool:
        """True, and the armed poll counts as begun, if it is due now; False otherwise. A long
        poll asks between two pages and runs the early poll there."""
        with self._lock:
            if self._due is None or self._due > self._clock():
                return False
            self._due = None
            self._fired.clear()
        self._on_poll()
        return True

    def ended(self, listed: int, span: float, known: int) -> None:
        """A triggered poll listed `listed` objects, changed over `span` seconds, of a kind that
        has `known`: past `storm_share` of them a second the kind is storming, and triggers
        pause for one interval. One second is added to the span: the services stamp whole
        seconds, and a burst stamped within one is still a second's worth."""
        if listed <= self.storm_share * max(known, STORM_FLOOR) * (span + 1.0):
            return
        with self._lock:
            self._paused_until = self._clock() + self.interval
            if self._due is not None:
                self._due = max(self._due, self._paused_until)
        self._on_storm()
