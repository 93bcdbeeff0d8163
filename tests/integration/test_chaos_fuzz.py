"""Chaos, small: fuzzed record values reach the dead-letter topic with a reason and the consumer
goes on; fuzzed settings exit 2 naming the setting, never with a traceback (the full runs are
`bench/chaos.py --scenario fuzz-records,fuzz-settings`)."""

from __future__ import annotations

from pathlib import Path

from connector.dev.chaos.fuzz import fuzz_records, fuzz_settings


def test_fuzzed_records_are_dead_lettered_and_the_consumer_goes_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    sink = f"sqlite:///{tmp_path / 'top.sqlite'}"
    outcome = fuzz_records(kafka_bootstrap, sink, tmp_path, count=3000)
    assert outcome.ok, "\n".join(outcome.lines())
    assert int(outcome.figures["unreadable"]) > 2500
    assert outcome.figures["dead letters (decode)"] == outcome.figures["unreadable"]


def test_fuzzed_settings_exit_2_naming_the_setting() -> None:
    outcome = fuzz_settings(examples=300, processes=2)
    assert outcome.ok, "\n".join(outcome.lines())
    assert int(outcome.figures["exit 2"]) > 100
    assert outcome.figures["process"] == 2
