"""Helpers shared by the tests: waiting on a condition, and (in the modules beside this one) the
broker, the CLI, example records, a simulated site and fakes of the site side."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], object],
    timeout: float = 30.0,
    what: str = "the condition",
    every: float = 0.05,
) -> None:
    """Return once `condition()` is true, asked every `every` seconds; AssertionError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(every)
