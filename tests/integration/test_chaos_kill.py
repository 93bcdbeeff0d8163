"""Chaos, small: the consumer SIGKILLed at random points while updates stream in, against real
PostgreSQL with a regression trigger (the full run is `bench/chaos.py --scenario kill`)."""

from __future__ import annotations

from pathlib import Path

from connector.dev.chaos.kill import consumer_kills


def test_sigkilled_consumer_converges_without_regressions(
    kafka_bootstrap: str, postgres_database: str, tmp_path: Path
) -> None:
    outcome = consumer_kills(
        kafka_bootstrap, postgres_database, tmp_path, updates=4000, keys=400, kills=2
    )
    assert outcome.ok, "\n".join(outcome.lines())
    assert outcome.figures["keys equal to the truth"] == 400
    assert int(outcome.figures["kills after the consumer had applied rows"]) >= 1
