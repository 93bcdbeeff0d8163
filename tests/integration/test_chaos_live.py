"""Chaos, small, with the whole data path live (sim, poller, consumer): broker restarts with churn
during each outage, then SIGTERM with the broker down; and a spell of site faults (the full runs
are `bench/chaos.py --scenario broker,faults`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.chaos.live import SiteSize, broker_restarts, site_faults

# Out of `make test` until fixed: both failed on main after the HA poller (lease election,
# transactions) and the site-side reliability work were merged (issue 13 stays open for it).
# `make known-failing` runs them.
pytestmark = pytest.mark.known_failing

SMALL = SiteSize(servers=40, volumes=40, ports=80)


def test_broker_restarts_recover_and_sigterm_ends_processes_with_the_broker_down(
    tmp_path: Path,
) -> None:
    # Frozen rather than restarted: a JVM start costs 10-30 s on the shared test machine. The
    # poller's SIGTERM during an outage is the site side's (issue 13); only the consumer's here.
    outcome = broker_restarts(
        tmp_path,
        rounds=1,
        outage=2.0,
        churn=40,
        size=SMALL,
        interval=1.0,
        resync_interval=3.0,
        freeze=True,
        stop=("consumer",),
    )
    assert outcome.ok, "\n".join(outcome.lines())
    assert len(outcome.rounds) == 1
    assert 0 <= float(outcome.figures["consumer exit after SIGTERM, broker down (s)"]) <= 10


def test_site_faults_degrade_then_converge(kafka_bootstrap: str, tmp_path: Path) -> None:
    outcome = site_faults(
        kafka_bootstrap,
        tmp_path,
        duration=9.0,
        spike=3.0,
        spike_every=4.0,
        token_every=3.0,
        size=SMALL,
        interval=1.0,
        resync_interval=5.0,
    )
    assert outcome.ok, "\n".join(outcome.lines())
    assert int(outcome.figures["poller API errors counted"]) > 0
    assert int(outcome.figures["token revocations"]) >= 2
