"""The publisher: only real changes, tombstones, the site sequence, delivery errors resent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connector.records.codec import Codec
from connector.records.fingerprint import record_fingerprint
from connector.records.model import SEQUENCE_HEADER, SEQUENCE_MAX, DetailValue, StatusRecord
from connector.site.kinds import Observation
from connector.site.publisher import observation_fingerprint
from connector.site.site_metrics import SiteMetrics
from tests.support.site import make_publisher


def obs(object_id: str = "a", status: str | None = "ACTIVE", **more: Any) -> Observation:
    return Observation(id=object_id, status=status, name="vm", project_id="p", **more)


def test_publishes_only_changes() -> None:
    publisher, producer, _ = make_publisher()
    assert publisher.observe("server", obs())
    assert not publisher.observe("server", obs())
    # The revision and updated time are not status: no record for them alone.
    assert not publisher.observe("server", obs(revision=7))
    assert publisher.observe("server", obs(status="SHUTOFF"))
    assert [key for key, _, _ in producer.sent] == ["s1/server/a", "s1/server/a"]
    record = Codec().decode(producer.sent[-1][1] or b"")
    assert (record.status, record.kind, record.id, record.site) == ("SHUTOFF", "server", "a", "s1")


def test_tombstone_only_for_known_keys_and_forgotten_once_delivered() -> None:
    publisher, producer, _ = make_publisher()
    assert not publisher.delete("server", "never-seen")
    publisher.observe("server", obs())
    producer.deliver()
    assert publisher.observe("server", obs(deleted=True))
    assert not publisher.delete("server", "a"), "a tombstone in flight is not sent twice"
    key, value, headers = producer.sent[-1]
    assert (key, value) == ("s1/server/a", None)
    assert int(headers[SEQUENCE_HEADER]) == publisher.sequence
    producer.deliver()
    assert publisher.known_ids("server") == set()
    assert publisher.observe("server", obs()), "a re-created object is new again"


def test_delivery_error_marks_the_key_dirty_so_the_change_is_resent() -> None:
    publisher, producer, health = make_publisher()
    publisher.observe("server", obs())
    producer.deliver(error="broker down")
    assert health.produce_errors == 1
    assert health.degraded()
    assert publisher.dirty_ids("server") == {"a"}
    assert publisher.observe("server", obs()), "the same state is sent again"
    assert publisher.dirty_ids("server") == set(), "a message in flight replaced the mark"
    producer.deliver()
    assert not publisher.observe("server", obs())
    assert publisher.dirty_ids("server") == set()


def test_a_key_dirty_again_after_a_resend_is_dirty_again() -> None:
    publisher, producer, _ = make_publisher()
    publisher.observe("server", obs("a"))
    publisher.observe("server", obs("b"))
    producer.deliver(error="broker down")
    assert publisher.dirty_ids("server") == {"a", "b"}
    publisher.observe("server", obs("a"))
    assert publisher.dirty_ids("server") == {"b"}, "a is in flight"
    producer.deliver(error="broker down again")
    assert publisher.dirty_ids("server") == {"a", "b"}
    publisher.observe("server", obs("a"))
    publisher.observe("server", obs("b"))
    producer.deliver()
    assert publisher.dirty_ids("server") == set()


def test_failed_tombstone_is_retried_on_the_next_vanish() -> None:
    publisher, producer, _ = make_publisher()
    publisher.observe("server", obs())
    publisher.delete("server", "a")
    producer.deliver(error="timeout")
    assert publisher.known_ids("server") == {"a"}
    assert publisher.delete("server", "a")


def test_sequence_grows_past_the_restored_one_and_past_the_clock() -> None:
    now = [1000.0]
    publisher, _, _ = make_publisher(last_sequence=5_000_000_000, clock=lambda: now[0])
    publisher.observe("server", obs("a"))
    assert publisher.sequence == 5_000_000_001
    now[0] = 9000.0
    publisher.observe("server", obs("b"))
    assert publisher.sequence == 9_000_000_000, "an emptied topic cannot send it backwards"
    now[0] = 1.0
    publisher.heartbeat("ok", {})
    assert publisher.sequence == 9_000_000_001, "a clock going back cannot either"


def test_metrics_count_per_kind_and_show_the_last_sequence() -> None:
    registry = CollectorRegistry()
    publisher, _, _ = make_publisher(last_sequence=7, metrics=SiteMetrics(registry, "s1"))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"site": "s1", **labels})

    assert sample("cascade_site_sequence") == 7, "the restored sequence, before any record"
    publisher.observe("server", obs("a"))
    publisher.observe("server", obs("a"))
    publisher.observe("volume", obs("v"))
    publisher.delete("server", "a")
    assert sample("cascade_site_sequence") == publisher.sequence
    assert sample("cascade_site_changes_published_total", kind="server") == 1
    assert sample("cascade_site_unchanged_suppressed_total", kind="server") == 1
    assert sample("cascade_site_changes_published_total", kind="volume") == 1
    assert sample("cascade_site_tombstones_total", kind="server") == 1


def test_heartbeats_are_never_deduplicated() -> None:
    publisher, producer, _ = make_publisher()
    publisher.heartbeat("ok", {"server.error": None})
    publisher.heartbeat("ok", {"server.error": None})
    assert [key for key, _, _ in producer.sent] == ["s1/site/s1", "s1/site/s1"]


def test_restored_fingerprint_equals_the_observed_one() -> None:
    """The restart path: a record read back from the topic must match a fresh observation."""
    details: dict[str, DetailValue] = {
        "attachments": ["x", "y"],
        "admin_state_up": True,
        "power_state": 1,
        "task_state": None,
        "weight": 1.5,
    }
    seen = obs(details=details, revision=3)
    record = StatusRecord(
        site="s1",
        kind="server",
        id="a",
        status="ACTIVE",
        sequence=1,
        observed_at=datetime.now(UTC),
        name="vm",
        project_id="p",
        details=details,
        revision=3,
    )
    codec = Codec()
    assert record_fingerprint(codec.decode(codec.encode(record))) == observation_fingerprint(seen)
    publisher, producer, _ = make_publisher(
        fingerprints={"server": {"a": observation_fingerprint(seen)}}
    )
    assert not publisher.observe("server", seen)
    assert producer.sent == []


@pytest.mark.parametrize("status", [None, "", "ACTIVE"])
def test_fingerprint_tells_none_from_empty(status: str | None) -> None:
    others = {observation_fingerprint(obs(status=s)) for s in (None, "", "ACTIVE") if s != status}
    assert observation_fingerprint(obs(status=status)) not in others


def test_a_sequence_that_cannot_grow_starts_a_new_epoch_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A record near 2^63 was restored from the topic: the next sequence would not fit.
    publisher, producer, health = make_publisher(
        last_sequence=SEQUENCE_MAX, clock=lambda: 1_700_000_000.0
    )
    assert publisher.observe("server", obs("a"))
    assert publisher.observe("server", obs("b"))
    publisher.delete("server", "a")
    records = [Codec().decode(value) for _, value, _ in producer.sent if value]
    assert [r.sequence for r in records] == [1_700_000_000_000_000, 1_700_000_000_000_001]
    assert producer.sent[-1][2][SEQUENCE_HEADER] == b"1700000000000002"
    epochs = [r for r in caplog.records if "cannot grow further" in r.getMessage()]
    assert len(epochs) == 1 and epochs[0].levelname == "ERROR"
    healthy, details = health.snapshot()
    assert not healthy and "new epoch at 1700000000000000" in str(details["sequence.epoch"])
