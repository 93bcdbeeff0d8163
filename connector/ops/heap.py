"""The garbage collector's settings for our long-running processes (the poller, the consumer).

Two costs: at Python's default the youngest generation is collected every 700 allocations,
and a listing page is tens of thousands of small dicts and strings, none in a cycle: dozens of
collections a page, for nothing. And every full collection rescans everything alive, most of it
the imported libraries (openstacksdk, keystoneauth, prometheus_client, librdkafka's bindings):
a stall that shows in the freshness percentiles. The figures: docs/performance.md.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Allocations between runs of the collector's youngest generation (Python's default: 700).
GC_THRESHOLD = 10_000


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
