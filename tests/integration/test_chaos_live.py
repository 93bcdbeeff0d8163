"""Chaos, small, with the whole data path live (sim, poller, consumer): broker restarts with churn
during each outage, then SIGTERM with the broker down; a 20 s outage, counting the log lines
about each distinct error; and a spell of site faults (the full runs are `bench/chaos.py
--scenario broker,faults`, outages of 60 s with `--outage 60`)."""

from __future__ import annotations

from pathlib import Path

from connector.dev.chaos.live import SiteSize, broker_restarts, site_faults
from connector.dev.local_kafka import LocalKafka

SMALL = SiteSize(servers=40, volumes=40, ports=80)


def test_broker_restarts_recover_and_sigterm_ends_processes_with_the_broker_down(
    private_kafka: LocalKafka, tmp_path: Path
) -> None:
    # Frozen rather than restarted: a JVM start costs 10-30 s on the shared test machine. The
    # broker is the tests' own, shared with the other tests that stop or freeze one: thawed at
    # the end, it serves the next.
    outcome = broker_restarts(
        tmp_path,
        broker=private_kafka,
        rounds=1,
        outage=2.0,
        churn=40,
        size=SMALL,
        interval=1.0,
        resync_interval=3.0,
        freeze=True,
        stop=("consumer", "poller"),
    )
    assert outcome.ok, "\n".join(outcome.lines())
    assert len(outcome.rounds) == 1
    for name in ("consumer", "poller"):
        assert 0 <= float(outcome.figures[f"{name} exit after SIGTERM, broker down (s)"]) <= 10


def test_a_broker_outage_logs_each_client_error_once_plus_counts_then_converges(
    private_kafka: LocalKafka, tmp_path: Path
) -> None:
    # Stopped, not frozen: a broker refusing connections is what librdkafka reports on every
    # reconnect attempt, from every client (one poller wrote over a thousand identical lines in
    # two minutes). 20 s holds the same rule as the 60 s of the full run: a count at most every
    # 10 s. The broker is left stopped; `private_kafka` starts it for the next test.
    outcome = broker_restarts(
        tmp_path,
        broker=private_kafka,
        rounds=1,
        outage=20.0,
        churn=40,
        size=SMALL,
        interval=1.0,
        resync_interval=3.0,
        stop=("consumer", "poller"),
    )
    assert outcome.ok, "\n".join(outcome.lines())
    for name in ("consumer", "poller"):
        assert int(outcome.figures[f"{name}: distinct errors logged"]) > 0, "no outage seen"


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
