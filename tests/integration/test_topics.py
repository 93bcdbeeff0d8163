"""`topics ensure|describe` against the real broker: create, detect drift, fix."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner, Result
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType

from connector.cli import cli
from connector.config import KafkaSettings
from connector.errors import ConfigError
from connector.kafka.topics import (
    TopicConfigError,
    describe_site_topic,
    ensure_dead_letter_topic,
    ensure_site_topic,
    ensure_site_topics,
    producer_limits,
    site_topic,
    site_topic_pattern,
)

pytestmark = pytest.mark.kafka


def _run(kafka_bootstrap: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--bootstrap", kafka_bootstrap])


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    entries = next(iter(futures.values())).result(timeout=30)
    return {name: entry.value for name, entry in entries.items()}


def _set_config(bootstrap: str, topic: str, values: dict[str, str]) -> None:
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in values.items()
    ]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    next(iter(admin.incremental_alter_configs([resource]).values())).result(timeout=30)


def test_ensure_creates_a_compacted_topic_then_reports_drift_and_fixes_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("p")
    topic, lease = f"{prefix}.site-a", f"{prefix}-lease.site-a"
    ensure = ["topics", "ensure", "--site", "site-a", "--prefix", prefix, "--partitions", "2"]

    created = _run(kafka_bootstrap, *ensure)
    assert created.exit_code == 0, created.output
    assert created.output == f"created {topic}\ncreated {lease}\n"
    config = _topic_config(kafka_bootstrap, topic)
    defaults = KafkaSettings()
    assert config["cleanup.policy"] == "compact"
    assert config["segment.ms"] == str(defaults.segment_ms)
    assert float(config["min.cleanable.dirty.ratio"]) == defaults.min_cleanable_dirty_ratio
    assert config["delete.retention.ms"] == str(defaults.delete_retention_ms)

    again = _run(kafka_bootstrap, *ensure)
    assert again.exit_code == 0, again.output
    assert again.output == (
        f"{topic} exists with the expected config\n{lease} exists with the expected config\n"
    )

    _set_config(
        kafka_bootstrap, topic, {"cleanup.policy": "compact,delete", "segment.ms": "604800000"}
    )
    drifted = _run(kafka_bootstrap, *ensure)
    assert drifted.exit_code == 1
    assert "cleanup.policy is compact,delete, should be compact" in drifted.output
    assert f"segment.ms is 604800000, should be {defaults.segment_ms}" in drifted.output
    assert "--fix" in drifted.output

    fixed = _run(kafka_bootstrap, *ensure, "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert f"{topic}: fixed: segment.ms is 604800000, should be 60000" in fixed.output
    assert _topic_config(kafka_bootstrap, topic)["cleanup.policy"] == "compact"

    clean = _run(kafka_bootstrap, *ensure)
    assert clean.exit_code == 0, clean.output


def test_ensure_reports_but_never_changes_the_partition_count(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=unique_name("p"))
    assert ensure_site_topic(settings, "s1").created
    more = settings.model_copy(update={"partitions": 6})
    report = ensure_site_topic(more, "s1")
    assert not report.differences
    assert report.notes == [
        "3 partitions, settings say 6 (only used for a new topic: changing the count would "
        "move keys between partitions)"
    ]


def test_ensure_raises_a_typed_error_carrying_the_report(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=unique_name("p"))
    ensure_site_topic(settings, "s1")
    stricter = settings.model_copy(update={"delete_retention_ms": 3 * 86_400_000})
    with pytest.raises(TopicConfigError) as caught:
        ensure_site_topic(stricter, "s1")
    (difference,) = caught.value.report.differences
    assert (difference.setting, difference.actual, difference.expected) == (
        "delete.retention.ms",
        "172800000",
        "259200000",
    )


def test_ensure_of_many_sites_creates_the_missing_and_checks_the_others_at_once(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("p")
    settings = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix)
    ensure_site_topic(settings, "b")
    many = ["topics", "ensure", "--prefix", prefix, "--site", "a", "--site", "b", "--site", "c"]

    result = _run(kafka_bootstrap, *many)

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"created {prefix}.a",
        f"{prefix}.b exists with the expected config",
        f"created {prefix}.c",
        f"created {prefix}-lease.a",
        f"created {prefix}-lease.b",
        f"created {prefix}-lease.c",
    ]
    for site in ("a", "c"):  # readable at once: every partition has its leader
        partitions = describe_site_topic(settings, site).partitions
        assert len(partitions) == 3 and all(p.leader is not None for p in partitions)
    _set_config(kafka_bootstrap, f"{prefix}.c", {"segment.ms": "604800000"})
    with pytest.raises(TopicConfigError, match=rf"topic {re.escape(prefix)}\.c config differs"):
        ensure_site_topics(settings, ["a", "b", "c"])


def test_describe_prints_partitions_and_config(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    prefix = unique_name("p")
    assert (
        _run(kafka_bootstrap, "topics", "ensure", "--site", "s", "--prefix", prefix).exit_code == 0
    )
    result = _run(kafka_bootstrap, "topics", "describe", "--site", "s", "--prefix", prefix)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"topic {prefix}.s: 3 partitions"
    assert [re.sub(r"leader \d+.*", "", line) for line in lines[1:4]] == [
        "partition 0: ",
        "partition 1: ",
        "partition 2: ",
    ]
    assert "config cleanup.policy=compact" in lines


def test_describe_of_a_missing_topic_is_kafka_trouble(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    result = _run(
        kafka_bootstrap, "topics", "describe", "--site", "s", "--prefix", unique_name("p")
    )
    assert result.exit_code == 4
    assert "does not exist" in result.output


def test_bad_site_name_is_a_usage_error_naming_the_value(kafka_bootstrap: str) -> None:
    result = _run(kafka_bootstrap, "topics", "ensure", "--site", "a/b")
    assert result.exit_code == 2
    assert "'a/b'" in result.output
    with pytest.raises(ConfigError, match="site name ''"):
        site_topic("cascade.status", "")


def test_subscription_pattern_matches_site_topics_only() -> None:
    pattern = re.compile(site_topic_pattern("cascade.status"))
    assert pattern.match(site_topic("cascade.status", "site-a"))
    assert not pattern.match("cascadeXstatus.site-a")
    assert not pattern.match("cascade.status")
    assert not pattern.match("cascade.statusX.site-a")


def test_dead_letter_topic_is_created_uncompacted_and_a_compacted_one_refused(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = KafkaSettings(bootstrap=kafka_bootstrap)
    topic = unique_name("dlq")
    assert ensure_dead_letter_topic(settings, topic) is True
    assert _topic_config(kafka_bootstrap, topic)["cleanup.policy"] == "delete"
    assert ensure_dead_letter_topic(settings, topic) is False
    _set_config(kafka_bootstrap, topic, {"cleanup.policy": "compact"})
    with pytest.raises(TopicConfigError, match=r"cleanup\.policy is compact, should be delete"):
        ensure_dead_letter_topic(settings, topic)


def test_members_starting_together_each_ensure_the_dead_letter_topic_and_may_read_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    # Consumer members started at once: one creates the topic, the others meet "already exists"
    # while it may not be in the broker's metadata yet, and all describe it next (its config,
    # its max.message.bytes); none may find it "unknown".
    settings = KafkaSettings(bootstrap=kafka_bootstrap)
    members = 4
    for n in range(3):
        topic = unique_name(f"dlq{n}")
        start = threading.Barrier(members)

        def member(topic: str = topic, start: threading.Barrier = start) -> bool:
            start.wait()
            created = ensure_dead_letter_topic(settings, topic)
            producer_limits(settings, topic)
            return created

        with ThreadPoolExecutor(members) as pool:
            outcomes = [f.result() for f in [pool.submit(member) for _ in range(members)]]
        assert sorted(outcomes) == [False] * (members - 1) + [True], outcomes


def test_a_bad_librdkafka_setting_is_a_usage_error(kafka_bootstrap: str) -> None:
    result = _run(kafka_bootstrap, "topics", "ensure", "--site", "s", "-X", "no.such.key=1")
    assert result.exit_code == 2
    assert "kafka.librdkafka: No such configuration property" in result.output
