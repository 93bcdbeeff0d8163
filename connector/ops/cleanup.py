"""Cleanup that never hides the error it cleans up after.

A plain `finally:` whose cleanup raises replaces the block's own exception with the cleanup's:
a failed commit reported as "flush failed", or a poll failure as a close error. `cleanup_after`
runs every step; when the block failed, a step's error is logged and the block's error goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def cleanup_after(*steps: Callable[[], object]) -> Iterator[None]:
    """Run `steps` in order when the block ends, each even if an earlier one failed. If the
    block raised, its exception propagates and step errors are logged; otherwise the first
    step error is raised once every step has run."""
    try:
        yield
    except BaseException:
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("cleanup failed too, after an earlier error (raised below)")
        raise
    first: Exception | None = None
    for step in steps:
        try:
            step()
        except Exception as exc:
            if first is None:
                first = exc
            else:
                log.exception("another cleanup step failed")
    if first is not None:
        raise first
