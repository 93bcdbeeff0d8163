"""The top consumer loop in a thread for a test: `consuming` runs a loop for a block (over a real
broker or tests/support/fake_group.py's fakes alike); `consumer_running` builds the consumer of
the app's settings with its sink, as `cascade-connector consume` does, and runs it so;
`consume_process` runs `cascade-connector consume` itself, a child process, over a site topic
it fills."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from connector.config import Settings
from connector.dev.chaos.harness import Children
from connector.records.model import StatusRecord
from connector.sinks import open_sink
from connector.top.loop import TopConsumer
from connector.top.service import build_consumer
from tests.support.kafka import create_topic, publish

T0 = datetime(2026, 1, 1, tzinfo=UTC)


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


def consume_process(
    bootstrap: str,
    name: Callable[[str], str],
    tmp_path: Path,
    sink: str,
    *args: str,
    records: int = 300,
    partitions: int = 2,
    env: dict[str, str] | None = None,
) -> Children:
    """`cascade-connector consume *args` (child "consumer", its sink `sink`) started over site
    east's topic, made with `partitions` and holding `records` servers; stop it with the
    Children returned."""
    prefix = name("status")
    create_topic(bootstrap, f"{prefix}.east", partitions=partitions)
    publish(
        bootstrap,
        f"{prefix}.east",
        (
            StatusRecord("east", "server", f"vm-{i}", "ACTIVE", i + 1, T0 + timedelta(seconds=i))
            for i in range(records)
        ),
    )
    children = Children(
        tmp_path,
        {
            "CASCADE_KAFKA_BOOTSTRAP": bootstrap,
            "CASCADE_KAFKA_TOPIC_PREFIX": prefix,
            "CASCADE_CONSUMER_GROUP": name("group"),
            "CASCADE_CONSUMER_DEAD_LETTER_TOPIC": name("dlq"),
            "CASCADE_SINK_URL": sink,
            **(env or {}),
        },
    )
    children.start("consumer", "consume", *args)
    return children
