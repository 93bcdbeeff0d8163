"""The top consumer against the real broker and a real SQLite sink: convergence, coalescing,
commits, the rate limit, dead letters, backpressure, a new site, two members in one group."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from connector.config import Settings, load_settings
from connector.records.codec import Codec
from connector.records.errors import RegistryError
from connector.records.messages import change_from_message
from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks import ApplyResult, Sink, SinkBackpressureError, open_sink
from connector.sinks.sql import create_engine
from connector.top.consumer import TopConsumer
from connector.top.service import build_consumer
from tests.support import wait_for
from tests.support.kafka import committed_offsets, create_topic, end_offsets, publish

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class Recording:
    """Wraps a real sink and records every apply: when, how many changes, how many keys, rows."""

    def __init__(self, sink: Sink, fail_first: int = 0) -> None:
        self.sink = sink
        self.calls: list[tuple[float, int, int, int]] = []
        self.fail_first = fail_first
        self.refused = 0

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        if self.refused < self.fail_first:
            self.refused += 1
            raise SinkBackpressureError("top layer busy (test)", retry_after=0.5)
        result = self.sink.apply(changes)
        keys = len({c.key for c in changes})
        self.calls.append((time.monotonic(), len(changes), keys, result.written))
        return result

    def close(self) -> None:
        self.sink.close()


def settings_for(
    bootstrap: str, name: Callable[[str], str], db: Path | str, **consumer: object
) -> Settings:
    return load_settings(
        flags={
            "kafka": {"bootstrap": bootstrap, "topic_prefix": name("status")},
            "sink": {"url": db if isinstance(db, str) else f"sqlite:///{db}"},
            "consumer": {
                "group": name("group"),
                "dead_letter_topic": name("dlq"),
                "batch_wait_ms": 100,
                **consumer,
            },
        }
    )


def record(site: str, obj: int, seq: int, status: str | None = None) -> StatusRecord:
    return StatusRecord(
        site=site,
        kind="server",
        id=f"vm-{obj}",
        status=status or f"S{seq}",
        sequence=seq,
        observed_at=T0 + timedelta(milliseconds=seq),
        name=f"vm-{obj}",
        project_id="p1",
        details={"vm_state": "active"},
    )


def sink_state(db: Path | str) -> dict[tuple[str, str, str], tuple[str | None, int, bool]]:
    engine = create_engine(db if isinstance(db, str) else f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT site, kind, id, status, sequence, deleted FROM resource_status")
        )
        return {(r[0], r[1], r[2]): (r[3], r[4], bool(r[5])) for r in rows}


def run_until_idle(loop: TopConsumer, timeout: float = 240) -> TopConsumer:
    """Run `loop` with --until-idle semantics on a thread; fail if it is not idle in time."""
    runner = threading.Thread(target=loop.run, kwargs={"until_idle": True})
    runner.start()
    runner.join(timeout=timeout)
    if runner.is_alive():
        loop.stop()
        runner.join(30)
        raise AssertionError(f"consumer did not become idle: {loop!r}")
    return loop


def test_converges_to_last_record_per_key(
    kafka_bootstrap: str, unique_name: Callable[[str], str], sql_url: str
) -> None:
    db = sql_url
    settings = settings_for(kafka_bootstrap, unique_name, db, batch_size=5000)
    topic = f"{settings.kafka.topic_prefix}.east"
    create_topic(kafka_bootstrap, topic, partitions=3)
    keys, rounds = 10_000, 10
    expected: dict[tuple[str, str, str], tuple[str | None, int, bool]] = {}
    changes: list[Change] = []
    seq = 0
    for r in range(rounds):
        for obj in range(keys):
            seq += 1
            if r == rounds - 1 and obj % 100 == 0:
                changes.append(Deletion("east", "server", f"vm-{obj}", seq))
                # A deletion may be applied before (or instead of) the record it follows, so a
                # marked row's status is not checked: only its sequence and the mark.
                expected[("east", "server", f"vm-{obj}")] = (None, seq, True)
            else:
                changes.append(record("east", obj, seq))
                expected[("east", "server", f"vm-{obj}")] = (f"S{seq}", seq, False)
    assert publish(kafka_bootstrap, topic, changes) == 100_000

    sink = Recording(open_sink(settings.sink))
    run_until_idle(build_consumer(settings, sink, CollectorRegistry()))

    state = {
        k: (None if deleted else status, seq, deleted)
        for k, (status, seq, deleted) in sink_state(db).items()
    }
    assert state == expected
    assert all(written <= keys for _t, _n, keys, written in sink.calls)
    assert sum(n for _t, n, _k, _w in sink.calls) < 100_000, "no coalescing happened"
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )


def test_rate_limit_holds_and_member_stays(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db, max_rate=1000.0)
    topic = f"{settings.kafka.topic_prefix}.west"
    create_topic(kafka_bootstrap, topic, partitions=2)
    publish(kafka_bootstrap, topic, (record("west", i, i + 1) for i in range(20_000)))

    sink = Recording(open_sink(settings.sink))
    loop = run_until_idle(build_consumer(settings, sink, CollectorRegistry()), timeout=120)

    times = sorted(t for t, n, _k, _w in sink.calls for _ in range(n))
    assert len(times) == 20_000
    start, worst = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] > 1.0:
            start += 1
        worst = max(worst, end - start + 1)
    assert worst <= 1050, f"{worst} records applied within one second"
    elapsed = times[-1] - times[0]
    assert elapsed >= 18.0, f"20,000 records at 1000/s took only {elapsed:.1f}s"
    assert loop.assign_events == 1, "the member was evicted or rebalanced during the run"
    assert loop.max_per_second <= 1050, "the consumer's own one-second maximum"


def test_dead_letters_and_good_records_around_them(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db)
    topic = f"{settings.kafka.topic_prefix}.north"
    create_topic(kafka_bootstrap, topic, partitions=1)
    unknown_schema = b"\xc3\x01" + b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x00" * 20
    publish(
        kafka_bootstrap,
        topic,
        [record("north", 1, 1)],
        raw=[(b"north/server/vm-2", b"garbage bytes"), (b"north/server/vm-3", unknown_schema)],
    )
    publish(kafka_bootstrap, topic, [record("north", 4, 4)])

    run_until_idle(build_consumer(settings, open_sink(settings.sink), CollectorRegistry()))

    assert set(sink_state(db)) == {("north", "server", "vm-1"), ("north", "server", "vm-4")}
    dlq = RawConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name("reader"),
            "auto.offset.reset": "earliest",
        }
    )
    dlq.subscribe([settings.consumer.dead_letter_topic])
    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < 2 and time.monotonic() < deadline:
        msg = dlq.poll(1)
        if msg is not None and msg.error() is None:
            letters.append(msg)
    dlq.close()
    assert [m.key() for m in letters] == [b"north/server/vm-2", b"north/server/vm-3"]
    assert letters[0].value() == b"garbage bytes"
    for msg, offset in zip(letters, (1, 2), strict=True):
        headers = dict(msg.headers())
        assert headers["reason"] == b"decode"
        assert headers["original.topic"] == topic.encode()
        assert headers["original.partition"] == b"0"
        assert headers["original.offset"] == str(offset).encode()
        assert headers["error"]
    assert b"fingerprint" in dict(letters[1].headers())["error"].lower()


def test_backpressure_rolls_back_and_commits_nothing_early(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db)
    topic = f"{settings.kafka.topic_prefix}.south"
    create_topic(kafka_bootstrap, topic, partitions=2)
    publish(kafka_bootstrap, topic, (record("south", i, i + 1) for i in range(500)))

    sink = Recording(open_sink(settings.sink), fail_first=2)
    run_until_idle(build_consumer(settings, sink, CollectorRegistry()))

    assert sink.refused == 2
    assert len(sink_state(db)) == 500
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )


def test_new_site_topic_is_picked_up_without_restart(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db)
    first = f"{settings.kafka.topic_prefix}.one"
    create_topic(kafka_bootstrap, first, partitions=1)
    publish(kafka_bootstrap, first, [record("one", 1, 1)])
    loop = build_consumer(settings, open_sink(settings.sink), CollectorRegistry())
    runner = threading.Thread(target=loop.run)
    runner.start()
    try:
        wait_for(lambda: ("one", "server", "vm-1") in sink_state(db), 30)
        second = f"{settings.kafka.topic_prefix}.two"
        create_topic(kafka_bootstrap, second, partitions=1)
        publish(kafka_bootstrap, second, [record("two", 1, 1)])
        wait_for(lambda: ("two", "server", "vm-1") in sink_state(db), 60)
    finally:
        loop.stop()
        runner.join(30)


def test_two_members_split_partitions_and_converge(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db, max_rate=5000.0)
    topic = f"{settings.kafka.topic_prefix}.big"
    create_topic(kafka_bootstrap, topic, partitions=4)
    # Distinct keys: nothing coalesces, so at 5000/s the work lasts long enough to be shared.
    publish(kafka_bootstrap, topic, (record("big", i, i + 1) for i in range(20_000)))
    sinks = [Recording(open_sink(settings.sink)) for _ in range(2)]
    loops = [build_consumer(settings, s, CollectorRegistry()) for s in sinks]
    # Both run until the *group* is idle: the member that finishes its share first (or starts
    # with an empty assignment) must not leave while the other still has work.
    runners = [threading.Thread(target=lp.run, kwargs={"until_idle": True}) for lp in loops]
    for r in runners:
        r.start()
    for r in runners:
        r.join(180)
    assert not any(r.is_alive() for r in runners), "a member did not become idle"
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )
    assert all(s.calls for s in sinks), "one member applied nothing: partitions were not split"
    expected = {("big", "server", f"vm-{i}"): (f"S{i + 1}", i + 1, False) for i in range(20_000)}
    assert sink_state(db) == expected


def test_registry_outage_rolls_back_and_recovers(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db)
    topic = f"{settings.kafka.topic_prefix}.reg"
    create_topic(kafka_bootstrap, topic, partitions=2)
    publish(kafka_bootstrap, topic, (record("reg", i, i + 1) for i in range(300)))
    codec = Codec()
    outages = [2]

    def decode_during_outage(msg: Message) -> Change:
        """The registry is down for the first two decodes that need it."""
        if outages[0]:
            outages[0] -= 1
            raise RegistryError("registry at http://127.0.0.1:1 refused the connection")
        return change_from_message(msg, codec)

    loop = build_consumer(
        settings, open_sink(settings.sink), CollectorRegistry(), decode=decode_during_outage
    )
    run_until_idle(loop, timeout=120)
    assert outages == [0]
    assert len(sink_state(db)) == 300
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )


def test_a_backlog_is_coalesced_and_written_at_the_rate(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Behind by many records of few keys: the consumer reads faster than the rate, writes at
    most the rate, and each key at most once per batch."""
    db = tmp_path / "top.sqlite"
    settings = settings_for(
        kafka_bootstrap, unique_name, db, max_rate=1000.0, batch_size=5000, batch_wait_ms=2000
    )
    topic = f"{settings.kafka.topic_prefix}.storm"
    create_topic(kafka_bootstrap, topic, partitions=2)
    publish(kafka_bootstrap, topic, (record("storm", i % 500, i + 1) for i in range(20_000)))

    sink = Recording(open_sink(settings.sink))
    started = time.monotonic()
    loop = run_until_idle(build_consumer(settings, sink, CollectorRegistry()), timeout=120)

    rows = sum(n for _t, n, _k, _w in sink.calls)
    assert rows <= 20_000 // 4, f"{rows} rows for 20,000 records of 500 keys: little coalescing"
    assert time.monotonic() - started < 20, "read no faster than the rate allows writes"
    assert loop.max_per_second <= 1050
    assert {k: v[1] for k, v in sink_state(db).items()} == {
        ("storm", "server", f"vm-{k}"): 19_500 + k + 1 for k in range(500)
    }
