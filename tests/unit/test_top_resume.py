"""Where the top consumer's reading resumes, with no broker (tests/support/fake_group.py): from
the offsets a sink that keeps them holds (a partition it knows nothing of from its beginning),
whatever the group committed in Kafka; from the group's committed offsets for a sink that keeps
none; a window's offsets go with the call that applies its last changes, or on their own once
its dead letters are delivered (again after `retry_after` while the sink asks to wait), always
before the Kafka commit; a stored offset older than what the log still proves is reported
loudly."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from connector.records.codec import Codec
from connector.top.consumer_metrics import ConsumerMetrics
from tests.support.fake_group import POLICY, FakeGroupConsumer, FakeSink, server, top_consumer
from tests.support.top import consuming

P0, P1 = ("site.a", 0), ("site.a", 1)
CODEC = Codec()
BEHIND_LOG = "cascade_consumer_offsets_behind_log_total"


def test_reading_starts_where_the_sink_stands_and_the_offsets_go_with_the_batch() -> None:
    # Kafka says all was read (as after a restore from a backup, or on an empty database);
    # the sink holds P0 at 2 and knows nothing of P1.
    group = FakeGroupConsumer([P0, P1], committed={P0: 4, P1: 2})
    changes = [server(str(i), "ACTIVE", i) for i in range(6)]
    for change in changes[:4]:
        group.produce(P0, change, CODEC)
    for change in changes[4:]:
        group.produce(P1, change, CODEC)
    sink = FakeSink(group.journal, offsets={("top", P0): 2})
    with consuming(top_consumer(group, sink), until_idle=True):
        pass
    assert group.journal.events("started")[0].partitions == {P0: 2, P1: 0}
    assert sorted(sink.applied(), key=lambda c: c.key) == changes[2:]
    assert sink.offsets == {("top", P0): 4, ("top", P1): 2}
    # Stored in the transaction of the batch, before the Kafka commit; never on their own.
    events = group.journal.events("apply", "offsets", "commit")
    assert [(e.what, e.partitions) for e in events] == [
        ("apply", {P0: 4, P1: 2}),
        ("commit", {P0: 4, P1: 2}),
    ]


def test_a_sink_keeping_no_offsets_resumes_from_the_groups_committed_offsets() -> None:
    group = FakeGroupConsumer([P0], committed={P0: 2})
    changes = [server(str(i), "ACTIVE", i) for i in range(4)]
    for change in changes:
        group.produce(P0, change, CODEC)
    sink = FakeSink(group.journal)
    with consuming(top_consumer(group, sink), until_idle=True):
        pass
    assert group.journal.events("started")[0].partitions == {P0: 2}
    assert sorted(sink.applied(), key=lambda c: c.key) == changes[2:]
    assert group.journal.commits() == [{P0: 4}]


def test_a_windows_offsets_wait_for_its_dead_letters_then_are_stored_before_the_commit() -> None:
    group = FakeGroupConsumer([P0])
    refused = server("2", "ACTIVE", 2)
    group.produce(P0, server("1", "ACTIVE", 1), CODEC)
    group.produce(P0, refused, CODEC)
    sink = FakeSink(group.journal, reject={refused.key: "no such project"}, offsets={})
    with consuming(
        top_consumer(group, sink, policy=replace(POLICY, retry_after=0.1)), until_idle=True
    ):
        pass
    events = group.journal.events("apply", "dead letters", "offsets", "commit")
    assert [(e.what, e.partitions) for e in events] == [
        ("apply", {}),  # it rejected a change: its dead letter comes before the offsets
        ("dead letters", {}),
        ("offsets", {P0: 2}),
        ("commit", {P0: 2}),
    ]
    assert sink.offsets == {("top", P0): 2}


def test_offsets_the_sink_cannot_store_yet_are_stored_after_retry_after_then_committed() -> None:
    # Nothing to write: the window's one record is a dead letter, so its offsets are stored on
    # their own, and the sink's first answer is "slow down".
    group = FakeGroupConsumer([P0])
    group.produce_raw(P0, server("1", "ACTIVE", 1).key.encode(), b"not avro")
    sink = FakeSink(group.journal, busy=1, offsets={})
    with consuming(
        top_consumer(group, sink, policy=replace(POLICY, retry_after=0.2)), until_idle=True
    ):
        pass
    events = group.journal.events("dead letters", "refused", "offsets", "commit")
    assert [(e.what, e.partitions) for e in events] == [
        ("dead letters", {}),
        ("refused", {}),
        ("offsets", {P0: 1}),
        ("commit", {P0: 1}),
    ], "the dead letter once, the offsets again after retry_after, one commit after them"
    assert events[2].at - events[1].at >= 0.2
    assert sink.offsets == {("top", P0): 1}


def resume_past_old_records(
    group: FakeGroupConsumer, retention: float, caplog: pytest.LogCaptureFixture
) -> tuple[FakeSink, list[str], float | None]:
    """Three records written ten minutes ago into P0 of `group`, read by a consumer (configured
    with a delete.retention.ms of `retention`) whose sink stands at offset 1: the sink, the
    errors logged and the behind-the-log count."""
    written = time.time() - 600
    for i in range(3):
        group.produce(P0, server(str(i), "ACTIVE", i), CODEC, at=written)
    sink = FakeSink(group.journal, offsets={("top", P0): 1})
    registry = CollectorRegistry()
    caplog.set_level(logging.ERROR)
    loop = top_consumer(group, sink, metrics=ConsumerMetrics(registry), delete_retention=retention)
    with consuming(loop, until_idle=True):
        pass
    # The top's own lines: a real client of an earlier test (a bootstrap nobody answers) may
    # still write its "no longer seen" line from its background thread meanwhile.
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name.startswith("connector.top")
    ]
    count = registry.get_sample_value(BEHIND_LOG, {"topic": "site.a", "partition": "0"})
    return sink, errors, count


@pytest.mark.parametrize("retention", [60.0, 3_600.0])
def test_a_stored_offset_older_than_what_the_log_proves_is_reported_loudly(
    retention: float, caplog: pytest.LogCaptureFixture
) -> None:
    # The sink stands at 1; the records after it were written ten minutes ago: with a
    # delete.retention.ms of a minute, tombstones among them may be gone; of an hour, not.
    sink, errors, count = resume_past_old_records(FakeGroupConsumer([P0]), retention, caplog)
    if retention > 600:
        assert errors == [] and count is None
        return
    assert count == 1
    (message,) = errors
    assert "site a: the sink stands at offset 1 of site.a[0]" in message
    assert "proves only from offset 3 on" in message
    assert "empty database" in message and "audit --repair" in message
    # Reported, and read on from where the sink stands all the same.
    assert len(sink.applied()) == 2


@pytest.mark.parametrize(("configured", "topics_own"), [(3_600.0, 60.0), (60.0, 3_600.0)])
def test_the_log_check_takes_the_topics_own_delete_retention(
    configured: float, topics_own: float, caplog: pytest.LogCaptureFixture
) -> None:
    # As above, records written ten minutes ago; the settings say one retention, the topic
    # (altered by hand) holds another: the topic's own decides whether tombstones may be gone.
    group = FakeGroupConsumer([P0], topic_retention={P0[0]: topics_own})
    _sink, errors, count = resume_past_old_records(group, configured, caplog)
    if topics_own > 600:
        assert errors == [] and count is None
    else:
        assert count == 1
        (message,) = errors
        assert "written more than 60 s ago may be gone" in message
