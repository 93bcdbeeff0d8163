"""The top consumer against the real broker and a real SQLite sink: convergence, coalescing,
commits, the rate limit, dead letters, backpressure, a new site, two members in one group."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Message, TopicPartition
from confluent_kafka import Producer as RawProducer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client import CollectorRegistry

from connector.config import Settings, load_settings
from connector.kafka.group_consumer import Consumer
from connector.kafka.transactions import TransactionalProducer
from connector.ops.ops_server import OpsServer
from connector.records.codec import Codec
from connector.records.errors import RegistryError
from connector.records.messages import change_from_message, to_message
from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks import ApplyResult, Sink, SinkBackpressureError, open_sink
from connector.sinks.base import Progress, SiteAvailability, SitePartition
from connector.sinks.sql import create_engine
from connector.top import offsets as top
from connector.top.dead_letters import OVERHEAD_BYTES
from connector.top.loop import TopConsumer
from connector.top.service import build_consumer, health_checks
from tests.support import wait_for
from tests.support.kafka import (
    committed_offsets,
    create_topic,
    end_offsets,
    header_map,
    publish,
)
from tests.support.top import consuming

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class Recording:
    """Wraps a real sink and records every apply: when, how many changes, how many keys, rows.
    Without `keep_offsets`, it keeps none, as the HTTP sink (Kafka's committed offsets decide
    where reading resumes)."""

    def __init__(self, sink: Sink, fail_first: int = 0, keep_offsets: bool = True) -> None:
        self.sink = sink
        self.keep_offsets = keep_offsets
        self.calls: list[tuple[float, int, int, int]] = []
        self.fail_first = fail_first
        self.refused = 0

    def apply(self, changes: Sequence[Change], progress: Progress | None = None) -> ApplyResult:
        if self.refused < self.fail_first:
            self.refused += 1
            raise SinkBackpressureError("top layer busy (test)", retry_after=0.5)
        result = self.sink.apply(changes, progress)
        keys = len({c.key for c in changes})
        self.calls.append((time.monotonic(), len(changes), keys, result.written))
        return result

    def stored_offsets(
        self, group: str, partitions: Collection[SitePartition]
    ) -> dict[SitePartition, int] | None:
        return self.sink.stored_offsets(group, partitions) if self.keep_offsets else None

    def set_availability(self, states: Sequence[SiteAvailability]) -> None:
        self.sink.set_availability(states)

    def interrupt(self) -> None:
        self.sink.interrupt()

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
    """Run `loop` until it is idle (tests/support/top.py); fail if it is not idle in time."""
    with consuming(loop, until_idle=True, timeout=timeout):
        pass
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
    # 12 s of work at the rate: longer than the consumer's group session (10 s), so a member
    # that the limiter kept from polling would be seen evicted.
    total = 12_000
    publish(kafka_bootstrap, topic, (record("west", i, i + 1) for i in range(total)))

    sink = Recording(open_sink(settings.sink))
    loop = run_until_idle(build_consumer(settings, sink, CollectorRegistry()), timeout=120)

    times = sorted(t for t, n, _k, _w in sink.calls for _ in range(n))
    assert len(times) == total
    start, worst = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] > 1.0:
            start += 1
        worst = max(worst, end - start + 1)
    assert worst <= 1050, f"{worst} records applied within one second"
    elapsed = times[-1] - times[0]
    assert elapsed >= 0.9 * total / 1000, f"{total} records at 1000/s took only {elapsed:.1f}s"
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
    letters: list[Message] = []
    deadline = time.monotonic() + 30
    while len(letters) < 2 and time.monotonic() < deadline:
        msg = dlq.poll(1)
        if msg is not None and msg.error() is None:
            letters.append(msg)
    dlq.close()
    assert [m.key() for m in letters] == [b"north/server/vm-2", b"north/server/vm-3"]
    assert letters[0].value() == b"garbage bytes"
    for msg, offset in zip(letters, (1, 2), strict=True):
        headers = header_map(msg)
        assert headers["reason"] == b"decode"
        assert headers["original.topic"] == topic.encode()
        assert headers["original.partition"] == b"0"
        assert headers["original.offset"] == str(offset).encode()
        assert headers["error"]
    assert b"fingerprint" in header_map(letters[1])["error"].lower()


def test_until_idle_after_transactions_commits_past_their_markers(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    # Pollers publish in transactions: each commit marker takes the offset after the last
    # record, so "committed = last record + 1" never reaches the end (the high watermark), and
    # a window waiting for its partitions to be read to that end would wait its longest.
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db, max_window_wait_ms=120_000)
    topic = f"{settings.kafka.topic_prefix}.marked"
    create_topic(kafka_bootstrap, topic, partitions=2)
    for batch in range(2):
        changes = (record("marked", i, 10 * batch + i + 1) for i in range(10))
        publish(kafka_bootstrap, topic, changes, transactional_id=topic)

    run_until_idle(build_consumer(settings, open_sink(settings.sink), CollectorRegistry()), 60)

    assert len(sink_state(db)) == 10
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )


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
    with consuming(loop):
        wait_for(lambda: ("one", "server", "vm-1") in sink_state(db), 30)
        second = f"{settings.kafka.topic_prefix}.two"
        create_topic(kafka_bootstrap, second, partitions=1)
        publish(kafka_bootstrap, second, [record("two", 1, 1)])
        wait_for(lambda: ("two", "server", "vm-1") in sink_state(db), 60)


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
    failed: list[BaseException] = []

    def run(loop: TopConsumer) -> None:
        try:
            loop.run(until_idle=True)
        except BaseException as exc:
            failed.append(exc)

    # Both run until the *group* is idle: the member that finishes its share first (or starts
    # with an empty assignment) must not leave while the other still has work.
    runners = [threading.Thread(target=run, args=(lp,)) for lp in loops]
    for r in runners:
        r.start()
    for r in runners:
        r.join(180)
    assert not any(r.is_alive() for r in runners), "a member did not become idle"
    assert not failed, f"a member's loop ended: {failed}"
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )
    assert all(s.calls for s in sinks), "one member applied nothing: partitions were not split"
    expected = {("big", "server", f"vm-{i}"): (f"S{i + 1}", i + 1, False) for i in range(20_000)}
    assert sink_state(db) == expected


def test_committed_offsets_timing_out_at_assignment_are_read_again(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker not answering the committed offsets of a new assignment in time (seen in a
    rebalance on the loaded test machine) is retried; the loop goes on. The timeouts are
    librdkafka's own, from the real broker: the first two reads are given no time to answer.
    The sink keeps no offsets (as the HTTP sink): the committed offsets are what is read."""
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db)
    topic = f"{settings.kafka.topic_prefix}.slow"
    create_topic(kafka_bootstrap, topic, partitions=2)
    publish(kafka_bootstrap, topic, (record("slow", i, i + 1) for i in range(300)))
    monkeypatch.setattr(top, "ASSIGN_RETRY_SECONDS", (0.2, 0.5))
    impatient = [2]
    real_committed = Consumer.committed

    def committed(
        self: Consumer, partitions: Collection[tuple[str, int]], timeout: float = 30.0
    ) -> dict[tuple[str, int], int]:
        if timeout == top.ASSIGN_READ_TIMEOUT and impatient[0]:
            impatient[0] -= 1
            timeout = 0.0
        return real_committed(self, partitions, timeout)

    monkeypatch.setattr(Consumer, "committed", committed)
    caplog.set_level(logging.WARNING, logger=top.__name__)
    sink = Recording(open_sink(settings.sink), keep_offsets=False)
    run_until_idle(build_consumer(settings, sink, CollectorRegistry()), 120)

    assert impatient == [0]
    retried = [r.getMessage() for r in caplog.records if "committed offsets of" in r.getMessage()]
    assert len(retried) == 2, retried
    assert all(f"{topic}[0], {topic}[1]" in m and "Local: Timed out" in m for m in retried)
    assert len(sink_state(db)) == 300
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )


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

    def decode_during_outage(msg: Message, site: str) -> Change:
        """The registry is down for the first two decodes that need it."""
        if outages[0]:
            outages[0] -= 1
            raise RegistryError("registry at http://127.0.0.1:1 refused the connection")
        return change_from_message(msg, codec, site)

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


def storm(
    site: str, keys: int, rounds: int, seq: int, last: Callable[[int], str]
) -> Iterator[Change]:
    """`rounds` records per key from sequence `seq` on, flapping between SHUTOFF and ERROR, the
    last round's status from `last(key)`; all observed within a second or two of the site's
    time, as in a restart storm."""
    for r in range(1, rounds + 1):
        for obj in range(keys):
            status = last(obj) if r == rounds else ("SHUTOFF", "ERROR")[r % 2]
            at = T0 + timedelta(microseconds=50 * seq)
            yield replace(record(site, obj, seq, status), observed_at=at)
            seq += 1


def test_a_storm_backlog_costs_one_write_per_changed_key(
    kafka_bootstrap: str, unique_name: Callable[[str], str], sql_url: str
) -> None:
    """Issue 10's must-show, scaled down (bench/collapse.py runs the full size, 200,000 records
    at 1,000/s): a backlog of 10,000 records over 1,000 keys, 100 of them ending different from
    what the sink holds: at most 110 rows written, the sink equal to the last record per key.
    The window holds the storm for churn / rate = 4.5 s, time enough to read all of it."""
    keys, rounds, changed = 1000, 10, 100
    settings = settings_for(
        kafka_bootstrap, unique_name, sql_url, max_rate=2000.0, max_window_wait_ms=15_000
    )
    topic = f"{settings.kafka.topic_prefix}.east"
    create_topic(kafka_bootstrap, topic, partitions=3)
    held = open_sink(settings.sink)
    held.apply([record("east", k, k + 1, "ACTIVE") for k in range(keys)])
    held.close()

    def ends(key: int) -> str:
        return "ERROR" if key < changed else "ACTIVE"

    backlog = storm("east", keys, rounds, keys + 1, ends)
    assert publish(kafka_bootstrap, topic, backlog) == keys * rounds

    sink = Recording(open_sink(settings.sink))
    run_until_idle(build_consumer(settings, sink, CollectorRegistry()), timeout=120)

    written = sum(w for _t, _n, _k, w in sink.calls)
    assert written <= changed * 1.1, f"{written} rows for {changed} keys that changed"
    assert {k[2]: v[0] for k, v in sink_state(sql_url).items()} == {
        f"vm-{k}": ends(k) for k in range(keys)
    }
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )


def test_a_live_storm_ending_where_it_began_is_not_handed_to_the_sink(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """The consumer remembers what it applied: a storm whose objects end as they were costs
    the sink nothing, not even a call, except for the objects that really changed."""
    keys, rounds, changed = 1000, 5, 100
    db = tmp_path / "top.sqlite"
    settings = settings_for(
        kafka_bootstrap, unique_name, db, max_rate=1000.0, max_window_wait_ms=6000
    )
    topic = f"{settings.kafka.topic_prefix}.west"
    create_topic(kafka_bootstrap, topic, partitions=2)
    sink = Recording(open_sink(settings.sink))
    registry = CollectorRegistry()
    loop = build_consumer(settings, sink, registry)
    with consuming(loop):
        publish(kafka_bootstrap, topic, (record("west", k, k + 1, "ACTIVE") for k in range(keys)))
        wait_for(lambda: len(sink_state(db)) == keys, 60)
        calls_before = len(sink.calls)

        def ends(key: int) -> str:
            return "ERROR" if key < changed else "ACTIVE"

        publish(kafka_bootstrap, topic, storm("west", keys, rounds, keys + 1, ends))
        wait_for(
            lambda: (
                committed_offsets(kafka_bootstrap, settings.consumer.group, topic)
                == end_offsets(kafka_bootstrap, topic)
            ),
            60,
        )
    handed = sum(n for _t, n, _k, _w in sink.calls[calls_before:])
    assert changed <= handed <= changed * 1.1, f"{handed} changes handed for {changed}"
    skipped = registry.get_sample_value("cascade_consumer_skipped_unchanged_total")
    assert skipped is not None and skipped >= keys - changed - changed // 10
    assert {k[2]: v[0] for k, v in sink_state(db).items()} == {
        f"vm-{k}": ends(k) for k in range(keys)
    }


def test_a_quiet_site_is_served_while_another_storms(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Issue 18, small: a storming site's backlog waits at the rate limit while a quiet site's
    few changes reach the top layer within a second or two; the limit is never exceeded."""
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db, max_rate=500.0)
    loud, quiet = (f"{settings.kafka.topic_prefix}.{s}" for s in ("loud", "quiet"))
    create_topic(kafka_bootstrap, loud, partitions=2)
    create_topic(kafka_bootstrap, quiet, partitions=1)
    publish(kafka_bootstrap, loud, (record("loud", k, k + 1) for k in range(4000)))
    loop = build_consumer(settings, open_sink(settings.sink), CollectorRegistry())

    def rows(site: str) -> int:
        return sum(1 for k in sink_state(db) if k[0] == site)

    with consuming(loop):
        wait_for(lambda: rows("loud") >= 500, 60)
        sent = time.monotonic()
        publish(kafka_bootstrap, quiet, (record("quiet", k, k + 1) for k in range(20)))
        wait_for(lambda: rows("quiet") == 20, 30)
        delay = time.monotonic() - sent
        loud_rows = rows("loud")
    assert delay < 3.0, f"the quiet site's changes took {delay:.1f} s"
    assert loud_rows < 4000 - 500, "the storm's backlog was not waiting: nothing to be fair about"
    assert loop.max_per_second <= 525


def test_a_second_member_joining_mid_window_converges(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    db = tmp_path / "top.sqlite"
    # 4,000 keys at 1,000 a second: four seconds of work, time for the second member to join
    # (at 2,000 a second the first member, reading faster since reads stopped waiting out their
    # timeout, finished before the rebalance did).
    settings = settings_for(kafka_bootstrap, unique_name, db, max_rate=1000.0)
    topic = f"{settings.kafka.topic_prefix}.join"
    create_topic(kafka_bootstrap, topic, partitions=4)
    keys = 4000
    publish(kafka_bootstrap, topic, (record("join", i % keys, i + 1) for i in range(2 * keys)))
    sinks = [Recording(open_sink(settings.sink)) for _ in range(2)]
    loops = [build_consumer(settings, s, CollectorRegistry()) for s in sinks]
    runners = [threading.Thread(target=lp.run, kwargs={"until_idle": True}) for lp in loops]
    runners[0].start()
    try:
        wait_for(lambda: len(sink_state(db)) >= 500, 60)
        assert len(sink_state(db)) < keys, "the first member finished before the second came"
        runners[1].start()
        for r in runners:
            r.join(120)
    finally:
        for lp in loops:
            lp.stop()
    assert not any(r.is_alive() for r in runners), "a member did not become idle"
    assert loops[0].assign_events >= 1 and all(s.calls for s in sinks), "no rebalance happened"
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )
    expected = {
        ("join", "server", f"vm-{k}"): (f"S{keys + k + 1}", keys + k + 1, False)
        for k in range(keys)
    }
    assert sink_state(db) == expected


def test_pending_keys_stay_near_the_cap_and_the_member_stays(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Past --max-pending-keys the busiest site's partitions are paused, polling goes on (no
    eviction), and a quiet site is read on."""
    db = tmp_path / "top.sqlite"
    cap, poll = 300, 100
    settings = settings_for(
        kafka_bootstrap, unique_name, db, max_rate=2000.0, max_pending_keys=cap, batch_size=poll
    )
    loud, quiet = (f"{settings.kafka.topic_prefix}.{s}" for s in ("loud", "quiet"))
    create_topic(kafka_bootstrap, loud, partitions=2)
    create_topic(kafka_bootstrap, quiet, partitions=1)
    publish(kafka_bootstrap, loud, (record("loud", k, k + 1) for k in range(1500)))
    publish(kafka_bootstrap, quiet, (record("quiet", k, k + 1) for k in range(50)))
    loop = run_until_idle(build_consumer(settings, open_sink(settings.sink), CollectorRegistry()))
    # One poll may land after the cap was reached, before the pause.
    assert cap <= loop.max_pending <= cap + 2 * poll
    assert loop.assign_events == 1, "the member was evicted or rebalanced while paused"
    state = sink_state(db)
    assert sum(1 for k in state if k[0] == "loud") == 1500
    assert sum(1 for k in state if k[0] == "quiet") == 50


def test_a_window_of_transactional_records_closes_without_waiting_for_its_maximum(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    # The pollers publish in transactions: each commit marker takes the offset after the
    # transaction's last record, which a window must not take for more records to wait for.
    settings = settings_for(
        kafka_bootstrap, unique_name, tmp_path / "top.sqlite", max_window_wait_ms=30_000
    )
    topic = f"{settings.kafka.topic_prefix}.east"
    create_topic(kafka_bootstrap, topic, partitions=1)
    producer = TransactionalProducer(settings.kafka, topic, {}, on_failure=lambda _f: None)
    loop = build_consumer(settings, open_sink(settings.sink), CollectorRegistry())
    with consuming(loop):
        for seq in (1, 2):
            msg = to_message(record("east", 1, seq), Codec())
            producer.produce(topic, msg.key, msg.value, lambda *_report: None)
            producer.flush(30)
            begun = time.monotonic()

            def applied(seq: int = seq) -> bool:
                row = sink_state(tmp_path / "top.sqlite").get(("east", "server", "vm-1"))
                return row == (f"S{seq}", seq, False)

            wait_for(applied, 25, f"record {seq} in the sink")
            took = time.monotonic() - begun
            assert took < 10, f"record {seq} applied {took:.1f} s after its commit"


def test_a_transaction_left_open_behind_a_window_does_not_hold_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    # Another producer's transaction, still open, past the last committed record: the high
    # watermark counts its record, the last stable offset does not, and reading committed
    # this member cannot read it. The window must not wait for it (it did, up to its maximum).
    settings = settings_for(
        kafka_bootstrap, unique_name, tmp_path / "top.sqlite", max_window_wait_ms=30_000
    )
    topic = f"{settings.kafka.topic_prefix}.east"
    create_topic(kafka_bootstrap, topic, partitions=1)
    publish(kafka_bootstrap, topic, [record("east", 1, 1)], transactional_id=topic)
    still_open = RawProducer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": topic + ".other"}
    )
    still_open.init_transactions(30)
    still_open.begin_transaction()
    msg = to_message(record("east", 2, 2), Codec())
    still_open.produce(topic, msg.value, msg.key)
    still_open.flush(30)
    loop = build_consumer(settings, open_sink(settings.sink), CollectorRegistry())
    begun = time.monotonic()
    try:
        with consuming(loop):
            wait_for(
                lambda: ("east", "server", "vm-1") in sink_state(tmp_path / "top.sqlite"),
                25,
                "the committed record in the sink",
            )
            took = time.monotonic() - begun
            assert took < 10, f"applied {took:.1f} s after the consumer started"
            assert ("east", "server", "vm-2") not in sink_state(tmp_path / "top.sqlite")
    finally:
        still_open.abort_transaction(30)


Rebalanced = Callable[[RawConsumer, list[TopicPartition]], None]


class DeafClient(RawConsumer):
    """A librdkafka consumer that joins its group and is given partitions, and never takes them
    (it assigns itself none): a member stuck as librdkafka's have been (its bugs 844, 3450 and
    4783), holding nothing while the broker counts the partitions as its own."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: Rebalanced | None = None,
        on_revoke: Rebalanced | None = None,
        on_lost: Rebalanced | None = None,
    ) -> None:
        def take_none(consumer: RawConsumer, _partitions: list[TopicPartition]) -> None:
            consumer.incremental_assign([])

        def give_back_none(consumer: RawConsumer, _partitions: list[TopicPartition]) -> None:
            consumer.incremental_unassign([])

        super().subscribe(
            topics, on_assign=take_none, on_revoke=give_back_none, on_lost=give_back_none
        )


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_member_whose_client_never_takes_its_partitions_says_so_rejoins_and_converges(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """The first two clients are given the partitions by the group and hold none: /readyz says
    so, each is replaced by a new client after consumer.stall_after_seconds (counted), and the
    third reads everything."""
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db, stall_after_seconds=3)
    topic = f"{settings.kafka.topic_prefix}.east"
    create_topic(kafka_bootstrap, topic, partitions=2)
    publish(kafka_bootstrap, topic, (record("east", i, i + 1) for i in range(50)))
    clients: list[RawConsumer] = []

    def make_client(config: dict[str, Any]) -> RawConsumer:
        clients.append((DeafClient if len(clients) < 2 else RawConsumer)(config))
        return clients[-1]

    registry = CollectorRegistry()
    loop = build_consumer(settings, open_sink(settings.sink), registry, make_client=make_client)
    ready, live = health_checks(loop)
    server = OpsServer(registry, ready, live=live).start()
    said: list[dict[str, object]] = []

    def stalled_said() -> bool:
        status, health = readyz(server.port)
        said.append(health)
        return status == 503 and "assignment.stalled" in health

    runner = threading.Thread(target=loop.run, kwargs={"until_idle": True})
    runner.start()
    try:
        wait_for(stalled_said, timeout=60, what="/readyz saying the member is stalled")
        runner.join(timeout=120)
        assert not runner.is_alive(), f"consumer did not become idle: {loop!r}"
        assert readyz(server.port)[0] == 200
    finally:
        loop.stop()
        runner.join(30)
        server.stop()
    stalled = str(said[-1]["assignment.stalled"])
    assert "while Kafka answers and no other member of the group reads" in stalled, stalled
    assert f"{topic}[0], {topic}[1]" in stalled, stalled
    assert len(clients) == 3
    assert registry.get_sample_value("cascade_consumer_rejoins_total") == 2
    assert len(sink_state(db)) == 50


def test_a_dead_letter_topic_that_takes_less_than_the_site_topic_still_takes_every_letter(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """The dead-letter topic takes 20,000 bytes a message; an unreadable record of 200,000
    bytes in a site topic is delivered cut to fit (the original size said), and the consumer
    goes on. Before, its delivery failed on every attempt and held its site's commits for good
    (the consumer never became idle)."""
    db = tmp_path / "top.sqlite"
    settings = settings_for(kafka_bootstrap, unique_name, db)
    topic, dlq_topic = f"{settings.kafka.topic_prefix}.north", settings.consumer.dead_letter_topic
    create_topic(kafka_bootstrap, topic, partitions=1)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    small = {"cleanup.policy": "delete", "max.message.bytes": "20000"}
    admin.create_topics([NewTopic(dlq_topic, 1, 1, config=small)])[dlq_topic].result(timeout=30)
    garbage = random.Random(26).randbytes(200_000)  # incompressible: over the limit compressed
    publish(kafka_bootstrap, topic, [record("north", 1, 1)], raw=[(b"north/server/vm-2", garbage)])

    run_until_idle(build_consumer(settings, open_sink(settings.sink), CollectorRegistry()), 120)

    assert set(sink_state(db)) == {("north", "server", "vm-1")}
    reader = RawConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name("reader"),
            "auto.offset.reset": "earliest",
        }
    )
    reader.subscribe([dlq_topic])
    letters: list[Message] = []

    def read() -> bool:
        msg = reader.poll(1)
        if msg is not None and msg.error() is None:
            letters.append(msg)
        return bool(letters)

    wait_for(read, timeout=30, what="the dead letter")
    reader.close()
    assert header_map(letters[0])["original.value.bytes"] == b"200000"
    assert letters[0].value() == garbage[: 20_000 - OVERHEAD_BYTES]
