"""The CLI as a user runs it: a real process, its output and exit code."""

from __future__ import annotations

import os

from tests.support.cli import run


def test_help_lists_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    assert "local-kafka" in out.stdout


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("cascade-connector, version ")


def test_bad_config_value_exits_2_naming_the_field() -> None:
    out = run("config", env={"CASCADE_KAFKA_PARTITIONS": "zero"})
    assert out.returncode == 2
    assert "kafka.partitions" in out.stderr
    assert "CASCADE_KAFKA_PARTITIONS" in out.stderr


def test_local_kafka_status_of_the_running_broker(kafka_bootstrap: str) -> None:
    port = kafka_bootstrap.rsplit(":", 1)[1]
    out = run("local-kafka", "--port", port, "status")
    if os.environ.get("CASCADE_KAFKA_BOOTSTRAP") and out.returncode == 1:
        assert "not running" in out.stdout  # an external broker is not ours to report on
    else:
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"answering on {kafka_bootstrap}" in out.stdout
