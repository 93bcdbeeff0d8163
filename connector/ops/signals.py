"""The one way a long-running command stops on SIGTERM or SIGINT.

While the block runs, either signal calls the command's `stop` (set an event, ask a loop to
finish, or raise to unwind), logged once per signal; the previous handlers come back after.
Python delivers signals to the main thread only, so elsewhere (a command run by a test in a
thread) the block runs without handlers and the caller stops it by its own means.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

#: The signals that ask a command to stop: a supervisor's TERM, a terminal's Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """Raised by `interrupt`: a stop signal unwinding a command that has no loop to ask."""


def interrupt() -> None:
    """A `stop` for commands that clean up in `finally` blocks: unwind as Ctrl-C does."""
    raise Interrupted()


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` on SIGTERM or SIGINT while the block runs (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
