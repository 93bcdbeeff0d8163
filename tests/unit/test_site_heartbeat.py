"""Site health: per-kind poll outcomes, delivery errors, and the heartbeat made of them."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from connector.site.heartbeat import Health
from connector.site.site_metrics import SiteMetrics


def test_heartbeat_details_and_degraded_state() -> None:
    registry = CollectorRegistry()
    health = Health(["server", "volume"], SiteMetrics(registry, "s1"))
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    health.poll_ok("server", started, objects=12)
    health.poll_ok("volume", started, objects=3)
    status, details = health.heartbeat()
    assert status == "ok"
    assert details["server.last_good_poll"] == started.isoformat()
    assert details["server.objects"] == 12 and details["server.error"] is None

    assert health.poll_failed("volume", "HttpException: 500") == 1
    assert health.poll_failed("volume", "HttpException: 500") == 2
    status, details = health.heartbeat()
    assert status == "degraded" and details["volume.error"] == "HttpException: 500"
    assert details["volume.last_good_poll"] == started.isoformat(), "the last good one stays"
    assert registry.get_sample_value("cascade_site_degraded", {"site": "s1"}) == 1
    labels = {"site": "s1", "kind": "volume"}
    assert registry.get_sample_value("cascade_site_api_errors_total", labels) == 2

    health.poll_ok("volume", started, objects=3)
    assert health.heartbeat()[0] == "ok"


def test_a_delivery_error_degrades_one_heartbeat_and_stays_counted() -> None:
    health = Health(["server"], SiteMetrics(CollectorRegistry(), "s1"))
    health.poll_ok("server", datetime.now(UTC), objects=1)
    health.delivery_failed("s1/server/a: timed out")
    assert health.snapshot()[0] is False
    status, details = health.heartbeat()
    assert status == "degraded" and details["produce.errors"] == 1
    status, details = health.heartbeat()
    assert status == "ok" and details["produce.error"] == "s1/server/a: timed out"


def test_a_poll_failed_since_the_last_heartbeat_degrades_the_next_one() -> None:
    # A site failing some requests: each kind's last poll may have succeeded by the heartbeat.
    registry = CollectorRegistry()
    health = Health(["server"], SiteMetrics(registry, "s1"))
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    health.poll_ok("server", started, objects=1)
    assert health.heartbeat()[0] == "ok"
    health.poll_failed("server", "HttpException: 500")
    health.poll_ok("server", started, objects=1)
    assert health.snapshot()[0] is False, "/healthz too, until a heartbeat reported it"
    assert health.heartbeat()[0] == "degraded"
    assert health.heartbeat()[0] == "ok", "reported once"
    assert registry.get_sample_value("cascade_site_degraded", {"site": "s1"}) == 0
