"""The memory settings of our long-running processes (the poller, the consumer): the garbage
collector's, and for the poller glibc's arenas.

Two costs: at Python's default the youngest generation is collected every 700 allocations,
and a listing page is tens of thousands of small dicts and strings, none in a cycle: dozens of
collections a page, for nothing. And every full collection rescans everything alive, most of it
the imported libraries (openstacksdk, keystoneauth, prometheus_client, librdkafka's bindings):
a stall that shows in the freshness percentiles. The figures: docs/performance.md.

glibc's allocator gives each thread that allocates while another does an arena of its own, up
to eight per core, and an arena keeps what its thread freed. A poller's kind threads each parse
and encode pages of a thousand objects at once, so its resident set grew with the arenas more
than with what it holds (which is a few MB: docs/performance.md).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

#: Allocations between runs of the collector's youngest generation (Python's default: 700).
GC_THRESHOLD = 10_000
#: glibc arenas for a poller (glibc's default: 8 per core); 2 cost no CPU measured.
MALLOC_ARENAS = 2
#: mallopt's parameter for the most arenas (malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """At most `arenas` glibc malloc arenas in this process, as MALLOC_ARENA_MAX would; True if
    set. Call it before the process starts threads: glibc fixes the limit when it first makes
    a second arena. A MALLOC_ARENA_MAX in the environment is left to rule, and elsewhere than
    glibc this does nothing."""
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))


@contextmanager
def collect_less() -> Iterator[None]:
    """For the duration: what is alive now (the imported libraries, the settings) is frozen out
    of the collector's sight (`gc.freeze`), and the youngest generation is collected every
    GC_THRESHOLD allocations. Both are undone after."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
