"""The top consumer loop in a thread for a test: `consuming` runs a loop for a block (over a real
broker or tests/support/fake_group.py's fakes alike); `consumer_running` builds the consumer of
the app's settings with its sink, as `cascade-connector consume` does, and runs it so."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry

from connector.config import Settings
from connector.sinks import open_sink
from connector.top.loop import TopConsumer
from connector.top.service import build_consumer


@contextmanager
def consuming(
    loop: TopConsumer, until_idle: bool = False, timeout: float = 60.0
) -> Iterator[list[BaseException]]:
    """Run `loop` in a thread for the block (what it raised so far, in the list yielded); stop
    it at the end, or with `until_idle` let it end by itself once every site partition is
    applied and committed; fail the test if it does not end within `timeout` seconds, and
    raise what it raised."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run(until_idle=until_idle)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="top-consumer-under-test")
    thread.start()
    try:
        yield failed
    finally:
        if not until_idle:
            loop.stop()
        thread.join(timeout)
        ended = not thread.is_alive()
        if not ended:
            loop.stop()
            thread.join(timeout)
    assert ended, (
        f"the consumer was not {'idle' if until_idle else 'stopped'} within {timeout:g} s: {loop!r}"
    )
    if failed:
        raise failed[0]


@contextmanager
def consumer_running(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    until_idle: bool = False,
    timeout: float = 60.0,
) -> Iterator[TopConsumer]:
    """The consumer of `settings` (its metrics in `registry`) and its sink, the consumer running
    in a thread for the block as `consuming` runs it; the sink closed at the end."""
    sink = open_sink(settings.sink)
    try:
        loop = build_consumer(settings, sink, registry or CollectorRegistry())
        with consuming(loop, until_idle, timeout):
            yield loop
    finally:
        sink.close()
