"""When a site's filling window closes (`closing.WindowCloser`), with no broker: `wait` after its
first record; held while its site churns faster than the rate limit could take, up to `max_wait`;
let go once the site's polls saw no change for QUIET_POLLS intervals; held while records that
were in Kafka when it became due are unread, but not for a transaction still open, nor past
`max_wait`; not while the window before it is being applied. The loop's use of these rules
(a window applied, then committed) is in test_top_loop.py."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from connector.kafka.group_consumer import Partition
from connector.records.codec import Codec
from connector.records.fingerprint import change_fingerprint
from connector.records.model import StatusRecord
from connector.top.closing import QUIET_POLLS, WindowCloser, WindowPolicy
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.window import Applied, Pending, SiteQueue
from tests.support.fake_group import POLICY, T0, FakeGroupConsumer, server

P0: Partition = ("site.a", 0)
CODEC = Codec()
#: A window stays open 0.1 s at least, 1 s at most.
WINDOW = replace(POLICY, wait=0.1, max_wait=1.0)


def _closer(
    group: FakeGroupConsumer, max_rate: float | None = None, policy: WindowPolicy = WINDOW
) -> WindowCloser:
    return WindowCloser(group, policy, max_rate, ConsumerMetrics(CollectorRegistry()))


def _read(q: SiteQueue, statuses: list[str], now: float, offset: int = 0, obj: str = "x") -> int:
    """`statuses` of one server read into `q`'s filling window at `now`, at offsets from
    `offset` on, observed by the site a millisecond apart; the next offset."""
    for i, status in enumerate(statuses):
        seq = offset + i
        change = StatusRecord(
            site="a",
            kind="server",
            id=obj,
            status=status,
            sequence=seq,
            observed_at=T0 + timedelta(milliseconds=seq),
        )
        q.filling.read(P0, seq, now)
        q.filling.put(Pending(change, P0, seq, None, change_fingerprint(change), now), None)
    return offset + len(statuses)


def _flapping(n: int) -> list[str]:
    """n + 1 statuses, each another than the one before: n changes of what the object shows."""
    return ["ACTIVE" if i % 2 == 0 else "SHUTOFF" for i in range(n + 1)]


def _closes_after(closer: WindowCloser, q: SiteQueue, opened: float) -> float:
    """Seconds after `opened` at which the window is first found closed, looked at every 10 ms
    up to 5 s (the closer's own answer to when checked against it)."""
    applied = Applied()
    for step in range(501):
        now = opened + step / 100
        closer.close_windows([q], applied, now)
        if q.closed is not None:
            return round(now - opened, 2)
    raise AssertionError("the window never closed")


def test_a_window_closes_wait_after_its_first_record_with_every_change_of_a_key_in_one() -> None:
    q = SiteQueue("a")
    closer = _closer(FakeGroupConsumer([P0]))
    _read(q, ["BUILD", "ACTIVE", "SHUTOFF"], now=100.0)
    assert closer.next_close([q], 100.0, at_most=0.5) == pytest.approx(WINDOW.wait)
    assert _closes_after(closer, q, 100.0) == WINDOW.wait
    assert q.closed is not None
    [entry] = q.closed.changes
    assert isinstance(entry.change, StatusRecord) and entry.change.status == "SHUTOFF"
    assert q.closed.window.merged == 2


def test_a_site_churning_faster_than_the_rate_limit_is_held_until_it_could_be_taken() -> None:
    # 50 changes within 50 ms of the site's time, at 100 changes/s: the top layer could take
    # them in 0.5 s, so the window absorbs for that long.
    q = SiteQueue("a")
    _read(q, _flapping(50), now=100.0)
    assert q.filling.churn == 50
    assert _closes_after(_closer(FakeGroupConsumer([P0]), max_rate=100.0), q, 100.0) == 0.5


def test_a_churning_site_is_held_no_longer_than_max_wait() -> None:
    q = SiteQueue("a")
    _read(q, _flapping(500), now=100.0)  # 5 s of the top layer's time at 100/s
    closer = _closer(FakeGroupConsumer([P0]), max_rate=100.0)
    assert _closes_after(closer, q, 100.0) == WINDOW.max_wait


def test_without_a_rate_limit_a_churning_site_is_not_held() -> None:
    q = SiteQueue("a")
    _read(q, _flapping(500), now=100.0)
    assert _closes_after(_closer(FakeGroupConsumer([P0])), q, 100.0) == WINDOW.wait


def test_a_churning_site_whose_polls_saw_no_change_for_quiet_polls_intervals_is_let_go() -> None:
    # The site polls every 0.2 s; its last change was read when the window opened: quiet for
    # QUIET_POLLS intervals 0.4 s later, well before the 5 s its churn would hold it.
    q = SiteQueue("a")
    q.poll_interval = 0.2
    _read(q, _flapping(500), now=100.0)
    closer = _closer(FakeGroupConsumer([P0]), max_rate=100.0)
    assert _closes_after(closer, q, 100.0) == QUIET_POLLS * 0.2


def test_a_site_over_the_pending_keys_cap_is_not_held_for_its_churn() -> None:
    q = SiteQueue("a")
    q.held = True
    _read(q, _flapping(500), now=100.0)
    closer = _closer(FakeGroupConsumer([P0]), max_rate=100.0)
    assert _closes_after(closer, q, 100.0) == WINDOW.wait


def test_a_due_window_waits_for_what_kafka_held_then_closes_once_read_to_there() -> None:
    group = FakeGroupConsumer([P0])
    for i, status in enumerate(_flapping(9)):  # 10 records in the partition
        group.produce(P0, server("x", status, i), CODEC)
    q = SiteQueue("a")
    closer = _closer(group)
    applied = Applied()
    read = _read(q, ["ACTIVE"] * 4, now=100.0)  # 4 of them read when the window is due
    closer.close_windows([q], applied, 100.0 + WINDOW.wait)
    assert q.closed is None, "closed with records in Kafka unread"
    assert q.filling.read_to == {P0: 10}
    group.produce(P0, server("y", "ACTIVE", 10), CODEC)
    _read(q, ["ACTIVE"] * 6, now=100.2, offset=read)  # read to where Kafka was, not past it
    closer.close_windows([q], applied, 100.2)
    assert q.closed is not None, "held for a record that came after it was due"


def test_a_due_window_behind_kafka_closes_at_max_wait() -> None:
    group = FakeGroupConsumer([P0])
    for i in range(10):
        group.produce(P0, server("x", "ACTIVE", i), CODEC)
    q = SiteQueue("a")
    _read(q, ["ACTIVE"], now=100.0)
    assert _closes_after(_closer(group), q, 100.0) == WINDOW.max_wait


class OpenTransaction(FakeGroupConsumer):
    """Its partitions' last stable offset is `stable`: what lies past it is a transaction still
    open (a paused poller's), counted by the high watermark but not readable yet."""

    def __init__(self, stable: int) -> None:
        super().__init__([P0])
        self.stable = stable

    def stable_ends(
        self, partitions: Collection[Partition], timeout: float = 10.0
    ) -> dict[Partition, int]:
        super().stable_ends(partitions, timeout)  # asked, as every question, in `ends_asked`
        return dict.fromkeys(partitions, self.stable)


def test_a_transaction_still_open_does_not_hold_a_window() -> None:
    group = OpenTransaction(stable=1)
    for i in range(10):
        group.produce(P0, server("x", "ACTIVE", i), CODEC)
    q = SiteQueue("a")
    _read(q, ["ACTIVE"], now=100.0)
    assert _closes_after(_closer(group), q, 100.0) == WINDOW.wait
    assert group.ends_asked == [frozenset({P0})], (
        "the last stable offset asked once, for the partition behind"
    )


def test_a_window_does_not_close_while_the_one_before_it_is_applied() -> None:
    q = SiteQueue("a")
    closer = _closer(FakeGroupConsumer([P0]))
    applied = Applied()
    _read(q, ["ACTIVE"], now=100.0, obj="first")
    closer.close_windows([q], applied, 100.0 + WINDOW.wait)
    first = q.closed
    assert first is not None
    _read(q, ["SHUTOFF"], now=100.2, offset=1, obj="second")
    assert closer.next_close([q], 100.5, at_most=0.5) == 0.5, "a close promised while applying"
    closer.close_windows([q], applied, 100.5)
    assert q.closed is first and q.filling.entries, "the second window closed over the first"
