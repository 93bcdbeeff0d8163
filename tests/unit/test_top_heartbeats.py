"""The heartbeat-age metric: a site's age counts on the top's own clock from when its heartbeat
was applied (a site clock an hour ahead reads as a fresh heartbeat, not an hour-old or future
one; how late it came is a metric apart), and the site leaves the metric when this member's
partitions of it are revoked or lost (else `CascadeSiteStale` fired after every rebalance)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from connector.records.codec import Codec
from connector.records.model import HEARTBEAT_KIND, StatusRecord
from connector.top.consumer_metrics import ConsumerMetrics
from tests.support import wait_for
from tests.support.fake_group import (
    LOOP_TIMEOUT,
    FakeGroupConsumer,
    FakeSink,
    top_consumer,
)
from tests.support.top import consuming

P0 = ("site.a", 0)
AGE = "cascade_site_heartbeat_age_seconds"
DELAY = "cascade_site_heartbeat_delay_seconds"


@pytest.mark.parametrize("take_away", ["revoke", "lost"])
def test_age_is_the_tops_clock_and_a_site_leaves_with_its_partitions(take_away: str) -> None:
    now = [datetime(2026, 12, 1, tzinfo=UTC).timestamp()]
    # The site's clock is an hour ahead of the top's.
    stamped = datetime.fromtimestamp(now[0], UTC) + timedelta(hours=1)
    beat = StatusRecord("a", HEARTBEAT_KIND, "a", "ok", 1, stamped, details={"poll.interval": 10})
    group = FakeGroupConsumer([P0])
    group.produce(P0, beat, Codec())
    sink = FakeSink(group.journal)
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, clock=lambda: now[0])
    with consuming(top_consumer(group, sink, metrics=metrics)):
        wait_for(lambda: sink.applied() == [beat], LOOP_TIMEOUT, "the heartbeat applied")
        wait_for(lambda: registry.get_sample_value(AGE, {"site": "a"}) is not None, 10, "its age")
        assert registry.get_sample_value(AGE, {"site": "a"}) == 0.0
        assert registry.get_sample_value(DELAY, {"site": "a"}) == -3600.0
        now[0] += 7.5
        assert registry.get_sample_value(AGE, {"site": "a"}) == 7.5
        (group.revoke if take_away == "revoke" else group.lose)([P0])
        wait_for(group.rebalanced, LOOP_TIMEOUT, f"the partition {take_away}")
        wait_for(lambda: registry.get_sample_value(AGE, {"site": "a"}) is None, 10, "age dropped")
        assert registry.get_sample_value(DELAY, {"site": "a"}) is None
