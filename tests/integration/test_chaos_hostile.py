"""Chaos, small: the hostile-input suite (the full run is `bench/hostile.py`). Hostile messages
in a site topic are dead letters (another site's among them, with reason `wrong site`) and the
good records around them all arrive; hostile API objects are skipped by the active poller and
by the standby that takes over, and every good object arrives."""

from __future__ import annotations

from pathlib import Path

from connector.dev.chaos.fuzz import hostile_records
from connector.dev.chaos.live import hostile_objects


def test_hostile_records_are_dead_letters_and_every_good_record_arrives(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    sink = f"sqlite:///{tmp_path / 'top.sqlite'}"
    outcome = hostile_records(kafka_bootstrap, sink, tmp_path, count=3000)
    assert outcome.ok, "\n".join(outcome.lines())
    figures = outcome.figures
    assert figures["good records among them"] == 300 and figures["good records lost"] == 0
    assert int(figures["dead letters (wrong site)"]) > 300
    assert figures["dead letters"] == figures["unreadable"]


def test_hostile_api_objects_are_skipped_by_the_active_poller_and_the_standby(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Polls every second, and the broker's shortest session (6 s) as the lease timeout: the
    # take-over after the SIGKILL waits for it.
    outcome = hostile_objects(
        kafka_bootstrap, tmp_path, hostile=300, good=50, churn=20, interval=1.0, lease_timeout=6.0
    )
    assert outcome.ok, "\n".join(outcome.lines())
    assert outcome.figures["process exits"] == 0
    assert int(outcome.figures["unreadable objects the heartbeat shows"]) > 250
