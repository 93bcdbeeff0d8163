"""The top consumer loop's rules, with no broker (tests/support/fake_group.py): a window closes
and is applied, then exactly the offsets after what it applied are committed; a sink asking to
slow down gets the same call again later and nothing is committed meanwhile; a revoke retries
the commit of what was applied and drops what is pending, a loss drops it without committing;
a commit behind what the group committed is refused; dead letters are delivered before the
commit of their window; the lag gauge's question to the broker, unanswered, holds no window,
commit or stop."""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from connector.errors import KafkaError
from connector.records.codec import Codec
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.lag import LagEnds
from connector.top.offsets import Offsets, ResumePolicy
from tests.support import wait_for
from tests.support.fake_group import (
    LOOP_TIMEOUT,
    POLICY,
    FakeDeadLetters,
    FakeGroupConsumer,
    FakeSink,
    server,
    top_consumer,
)
from tests.support.top import consuming

P0, P1 = ("site.a", 0), ("site.a", 1)
CODEC = Codec()


def test_a_window_is_applied_then_exactly_the_offsets_past_it_are_committed() -> None:
    group = FakeGroupConsumer([P0, P1])
    first, second, later = (
        server("1", "BUILD", 1),
        server("2", "ACTIVE", 2),
        server("1", "ACTIVE", 3),
    )
    other = server("3", "ERROR", 4)
    for tp, change in [(P0, first), (P0, second), (P0, later), (P1, other)]:
        group.produce(tp, change, CODEC)
    sink = FakeSink(group.journal)
    with consuming(top_consumer(group, sink), until_idle=True):
        pass
    assert [e.what for e in group.journal.events("apply", "commit")] == ["apply", "commit"]
    # The window kept the last change per key, and went out in one call.
    assert sorted(sink.applied(), key=lambda c: c.key) == [later, second, other]
    assert group.journal.commits() == [{P0: 3, P1: 1}]


def test_records_the_sink_holds_newer_are_counted() -> None:
    group = FakeGroupConsumer([P0])
    older, fresh = server("1", "BUILD", 1), server("2", "ACTIVE", 2)
    group.produce(P0, older, CODEC)
    group.produce(P0, fresh, CODEC)
    registry = CollectorRegistry()
    sink = FakeSink(group.journal, stale={older.key})
    with consuming(top_consumer(group, sink, metrics=ConsumerMetrics(registry)), until_idle=True):
        pass
    assert registry.get_sample_value("cascade_consumer_stale_records_total") == 1
    assert registry.get_sample_value("cascade_consumer_rows_applied_total") == 1


def test_a_sink_asking_to_slow_down_gets_the_same_call_again_later_and_nothing_is_committed() -> (
    None
):
    group = FakeGroupConsumer([P0])
    for i in range(3):
        group.produce(P0, server(str(i), "ACTIVE", i), CODEC)
    sink = FakeSink(group.journal, busy=2, retry_after=0.2)
    registry = CollectorRegistry()
    with consuming(top_consumer(group, sink, metrics=ConsumerMetrics(registry)), until_idle=True):
        pass
    events = group.journal.events("refused", "apply", "commit", "commit failed")
    assert [e.what for e in events] == ["refused", "refused", "apply", "commit"]
    assert events[0].changes == events[1].changes == events[2].changes, "the same call again"
    assert all(later.at - earlier.at >= 0.2 for earlier, later in itertools.pairwise(events[:3]))
    assert group.journal.commits() == [{P0: 3}]
    batches = "cascade_consumer_batches_total"
    assert registry.get_sample_value(batches, {"outcome": "backpressure"}) == 2
    assert registry.get_sample_value(batches, {"outcome": "applied"}) == 1
    assert (registry.get_sample_value("cascade_consumer_backpressure_seconds_total") or 0) > 0


@pytest.mark.parametrize("take_away", ["revoke", "lost"])
def test_a_partition_taken_away_drops_what_is_pending_and_only_a_revoke_commits(
    take_away: str,
) -> None:
    # Every commit fails, so what was applied is still to commit when the partition goes.
    group = FakeGroupConsumer([P0, P1], commit_failures=1_000_000)
    sink = FakeSink(group.journal)
    for i in range(3):
        group.produce(P0, server(str(i), "ACTIVE", i), CODEC)
    with consuming(top_consumer(group, sink)):
        wait_for(lambda: len(sink.applied()) == 3, LOOP_TIMEOUT, "the first window applied")
        wait_for(
            lambda: any(e.partitions.get(P0) == 3 for e in group.journal.events("commit failed")),
            LOOP_TIMEOUT,
            "its commit tried",
        )
        # Read, pending in the next window (which cannot close before the rebalance is
        # served: that is the member's next poll), then taken away.
        pending = [server(str(i), "SHUTOFF", 10 + i) for i in range(2)]
        for change in pending:
            group.produce(P0, change, CODEC)
        (group.revoke if take_away == "revoke" else group.lose)([P0])
        wait_for(group.rebalanced, LOOP_TIMEOUT, f"the partition {take_away}")
        # The partition left is read on: once its record is applied, a window of the one taken
        # away would have been applied too.
        still = server("p1", "ACTIVE", 20)
        group.produce(P1, still, CODEC)
        wait_for(lambda: still in sink.applied(), LOOP_TIMEOUT, "the other partition applied")
    assert not [c for c in sink.applied() if c in pending], "pending changes of one taken away"
    events = group.journal.events()
    gone = next(i for i, e in enumerate(events) if e.what == take_away)
    # What was tried in the rebalance's callback (closing the loop at the end revokes P1).
    during = [e.partitions for e in events[gone:] if e.during == take_away and P0 in e.partitions]
    if take_away == "revoke":
        # Retried once more while the partition is still this member's: what was applied.
        assert [offsets.get(P0) for offsets in during] == [3]
    else:
        assert during == [], "a lost partition is not this member's to commit"
    commits = ("commit", "commit failed")
    after = [e.partitions for e in events[gone:] if e.what in commits and e.during != take_away]
    assert after and all(P0 not in offsets for offsets in after), after
    tried = [e.partitions for e in events if e.what in commits]
    assert all(offsets.get(P0, 3) == 3 for offsets in tried), "pending offsets committed"


def test_a_commit_behind_what_the_group_committed_is_refused() -> None:
    group = FakeGroupConsumer([P0], committed={P0: 7}, read_failures=1)
    lag_ends = LagEnds(group)
    offsets = Offsets(
        group,
        r"^site\..+",
        ConsumerMetrics(CollectorRegistry()),
        FakeSink(group.journal),
        ResumePolicy("top", "site", 86_400.0),
        lag_ends,
    )
    try:
        offsets.assign([P0])  # the read times out; the check waits for the next one
        offsets.read_committed(now=float("inf"))
        with pytest.raises(
            KafkaError, match=r"refusing to commit site\.a\[0\]@3: behind the committed 7"
        ):
            offsets.commit({P0: 3})
        offsets.commit({P0: 7})
        offsets.commit({P0: 9})
        with pytest.raises(KafkaError, match=r"site\.a\[0\]@8: behind the committed 9"):
            offsets.commit({P0: 8})
    finally:
        lag_ends.stop()
    assert group.journal.commits() == [{P0: 7}, {P0: 9}], "nothing of a refused commit"


def test_dead_letters_are_delivered_before_their_window_is_committed() -> None:
    group = FakeGroupConsumer([P0])
    refused = server("3", "ACTIVE", 3)
    group.produce(P0, server("1", "ACTIVE", 1), CODEC)
    group.produce_raw(P0, server("2", "ACTIVE", 2).key.encode(), b"not avro")
    group.produce(P0, refused, CODEC)
    group.produce(P0, server("4", "ACTIVE", 4, site="b"), CODEC)
    sink = FakeSink(group.journal, reject={refused.key: "no such project"})
    dead_letters = FakeDeadLetters(group.journal, failures=1)
    policy = replace(POLICY, retry_after=0.2)
    with consuming(top_consumer(group, sink, dead_letters, policy), until_idle=True):
        pass
    events = group.journal.events("apply", "undelivered", "dead letters", "commit")
    assert [e.what for e in events] == ["apply", "undelivered", "dead letters", "commit"]
    assert events[2].at - events[1].at >= 0.2, "retried after the policy's retry_after"
    letters = sorted((letter.offset, letter.reason) for letter in dead_letters.delivered())
    assert letters == [(1, "decode"), (2, "rejected"), (3, "wrong site")]
    assert group.journal.commits() == [{P0: 4}]


def test_the_windows_of_many_sites_applied_in_one_turn_go_out_in_one_commit() -> None:
    sites = [(f"site.s{i}", 0) for i in range(5)]
    group = FakeGroupConsumer(sites)
    for i, tp in enumerate(sites):
        group.produce(tp, server(str(i), "ACTIVE", i, site=f"s{i}"), CODEC)
        group.produce(tp, server(f"{i}b", "ACTIVE", i, site=f"s{i}"), CODEC)
    with consuming(top_consumer(group), until_idle=True):
        pass
    # One round trip to the group coordinator, not one per site's window.
    assert group.journal.commits() == [dict.fromkeys(sites, 2)]


def test_the_lag_gauge_counts_what_is_read_but_not_committed_while_nothing_commits() -> None:
    group = FakeGroupConsumer([P0])
    for i in range(3):
        group.produce(P0, server(str(i), "ACTIVE", i), CODEC)
    # The sink refuses every call for now: nothing is committed.
    sink = FakeSink(group.journal, busy=1_000_000, retry_after=0.05)
    registry = CollectorRegistry()
    lag = {"topic": P0[0], "partition": str(P0[1])}
    with consuming(top_consumer(group, sink, metrics=ConsumerMetrics(registry))):
        wait_for(
            lambda: registry.get_sample_value("cascade_consumer_lag_records", lag) == 3,
            what="a lag of 3 records with no commit",
        )
        sink.busy = 0
        wait_for(
            lambda: registry.get_sample_value("cascade_consumer_lag_records", lag) == 0,
            what="no lag once applied and committed",
        )
    assert group.journal.commits() == [{P0: 3}]


def test_a_lag_question_with_no_answer_holds_no_window_commit_or_stop() -> None:
    group = FakeGroupConsumer([P0, P1])
    group.ends_answer.clear()  # the broker never answers what the partitions' ends are
    sink = FakeSink(group.journal)
    stopped_at = [0.0]
    try:
        with consuming(top_consumer(group, sink), timeout=5.0):
            wait_for(lambda: group.ends_asked, LOOP_TIMEOUT, "the lag gauge's question")
            for i in range(3):
                change = server(str(i), "ACTIVE", i)
                group.produce(P0, change, CODEC)
                wait_for(
                    functools.partial(_committed, group, {P0: i + 1}),
                    LOOP_TIMEOUT,
                    f"window {i} applied and committed while the question waits",
                )
            assert [c.key for c in sink.applied()] == [server(str(i), "", i).key for i in range(3)]
            stopped_at[0] = time.monotonic()
        took = time.monotonic() - stopped_at[0]
    finally:
        group.ends_answer.set()
    assert group.ends_asked == [frozenset({P0, P1})], "one question, every assigned partition"
    # The client must outlive the question under way: the stop waits for it, 1.5 s at most.
    assert took < 3.0, took


def _committed(group: FakeGroupConsumer, offsets: dict[tuple[str, int], int]) -> bool:
    return offsets in group.journal.commits()


def test_a_member_given_no_partition_while_they_go_unread_says_so_rejoins_and_reads() -> None:
    group = FakeGroupConsumer([P0, P1], deaf=2)
    change = server("1", "ACTIVE", 1)
    group.produce(P0, change, CODEC)
    sink, registry = FakeSink(group.journal), CollectorRegistry()
    loop = top_consumer(group, sink, metrics=ConsumerMetrics(registry), stall_after=0.3)
    said: list[str] = []
    with consuming(loop):
        wait_for(lambda: loop.stalled is not None, LOOP_TIMEOUT, "the stall said")
        said.append(loop.stalled or "")
        wait_for(lambda: sink.applied() == [change], LOOP_TIMEOUT, "the change applied")
    assert said[0].startswith("no partition for ") and "while Kafka answers" in said[0], said
    assert "site.a[0], site.a[1]" in said[0]
    assert group.rejoins == 2, "the first new client is stuck too: replaced again"
    assert registry.get_sample_value("cascade_consumer_rejoins_total") == 2
    assert loop.stalled is None, "said until a partition comes"
