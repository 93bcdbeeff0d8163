"""Settings: layering (file < environment < flags) and errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigError


def test_defaults() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert settings.kafka.topic_prefix == "cascade.status"


def test_layers_flags_over_env_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[kafka]\nbootstrap = "file:1"\npartitions = 5\n[kafka.librdkafka]\n"linger.ms" = "50"\n'
    )
    settings = load_settings(cfg, {"CASCADE_KAFKA_BOOTSTRAP": "env:2"}, {})
    assert settings.kafka.bootstrap == "env:2"
    assert settings.kafka.partitions == 5
    settings = load_settings(
        cfg,
        {"CASCADE_KAFKA_BOOTSTRAP": "env:2"},
        {"kafka": {"bootstrap": "flag:3", "librdkafka": {"acks": "all"}}},
    )
    assert settings.kafka.bootstrap == "flag:3"
    assert settings.kafka.librdkafka == {"linger.ms": "50", "acks": "all"}
    assert settings.kafka.client_config()["linger.ms"] == "50"


def test_bad_env_value_names_field_and_source() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.partitions.*CASCADE_KAFKA_PARTITIONS"):
        load_settings(None, {"CASCADE_KAFKA_PARTITIONS": "many"})


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[kafka]\nbootstarp = 'x:1'\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstarp"):
        load_settings(cfg)


def test_bad_bootstrap_names_the_bad_server() -> None:
    with pytest.raises(ConfigError, match="'nohost'"):
        load_settings(None, {}, {"kafka": {"bootstrap": "a:1,nohost"}})


@pytest.mark.parametrize("name", ["a/b", "", "..", "a\n"])
def test_bad_site_name_is_refused_by_the_records_rule(name: str) -> None:
    # The settings and the codec apply one rule (records.checks): ".." fits the characters but
    # cannot be a topic suffix.
    with pytest.raises(ConfigError, match=rf"site\.name.*site name {re.escape(repr(name))}"):
        load_settings(None, {}, {"site": {"name": name}})
    assert load_settings(None, {}, {"site": {"name": "site-a.b_1"}}).site.name == "site-a.b_1"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_the_apply_budget_must_end_before_the_poll_interval() -> None:
    load_settings(env={"CASCADE_SINK_APPLY_TIMEOUT": "260"})
    with pytest.raises(ConfigError, match=r"sink\.apply_timeout") as info:
        load_settings(env={"CASCADE_SINK_APPLY_TIMEOUT": "280"})
    assert "max.poll.interval.ms" in str(info.value)
    assert "CASCADE_SINK_APPLY_TIMEOUT" in str(info.value)
    longer = {"kafka": {"librdkafka": {"max.poll.interval.ms": "900000"}}}
    assert load_settings(env={"CASCADE_SINK_APPLY_TIMEOUT": "600"}, flags=longer)
