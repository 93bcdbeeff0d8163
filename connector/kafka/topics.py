"""Site topics: their names, the consumer's subscription pattern, and the admin work that creates
a topic and checks its config (AdminClient; never the broker's auto-create).

A site topic is `<prefix>.<site>`, compacted, with the compaction settings from KafkaSettings.
A topic that exists with another config is reported, setting by setting, and not silently used:
`ensure_site_topic` raises TopicConfigError unless asked to fix it.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient

# Imported from their defining modules: confluent_kafka.admin re-exports them implicitly only,
# which mypy's strict mode does not accept.
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from connector.errors import ConfigError, ConnectorError, KafkaError
from connector.kafka.client import new_client
from connector.kafka.settings import KafkaSettings

#: Characters Kafka allows in a topic name; a site name becomes the suffix of its topic.
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
#: Kafka's limit on a topic name's length.
MAX_TOPIC_NAME = 249

#: Seconds an admin request may take before it counts as Kafka trouble.
ADMIN_TIMEOUT = 30.0
#: Seconds a topic created a moment ago may take to show every partition with a leader in the
#: metadata; under load (twenty pollers creating topics at once) the controller is slow to
#: propagate them, and reading before that answers "Unknown topic or partition".
READY_TIMEOUT = 60.0


class TopicConfigError(ConnectorError):
    """A site topic exists with a config that differs from the expected one."""

    def __init__(
        self,
        report: TopicReport,
        remedy: str = "`cascade-connector topics ensure --fix` applies the expected config",
    ) -> None:
        lines = "; ".join(str(d) for d in report.differences)
        super().__init__(f"topic {report.topic} config differs: {lines} ({remedy})")
        self.report = report


@dataclass(frozen=True)
class ConfigDifference:
    """One topic setting whose value is not the expected one (`actual` None: not reported)."""

    setting: str
    actual: str | None
    expected: str

    def __str__(self) -> str:
        return f"{self.setting} is {self.actual}, should be {self.expected}"


@dataclass
class TopicReport:
    """What `ensure_site_topic` found and did."""

    topic: str
    created: bool = False
    #: settings that differed from the expected config (and were set, when `fixed`)
    differences: list[ConfigDifference] = field(default_factory=list)
    fixed: bool = False
    #: differences that are reported but never changed (partition count, replication)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable report, one line per fact."""
        if self.created:
            out = [f"created {self.topic}"]
        elif not self.differences:
            out = [f"{self.topic} exists with the expected config"]
        else:
            verb = "fixed" if self.fixed else "differs"
            out = [f"{self.topic}: {verb}: {d}" for d in self.differences]
        return out + [f"{self.topic}: note: {n}" for n in self.notes]


@dataclass(frozen=True)
class PartitionInfo:
    id: int
    leader: int | None
    replicas: list[int]
    in_sync: list[int]


@dataclass(frozen=True)
class TopicDescription:
    """A site topic's partitions and config, as the brokers report them."""

    topic: str
    partitions: list[PartitionInfo]
    #: every setting that is not a broker default, plus the ones the connector checks
    config: dict[str, str]

    def lines(self) -> list[str]:
        """Human-readable description, one line per partition and per setting."""
        out = [f"topic {self.topic}: {len(self.partitions)} partitions"]
        out += [
            f"partition {p.id}: leader {p.leader}, replicas {p.replicas}, in-sync {p.in_sync}"
            for p in self.partitions
        ]
        return out + [f"config {name}={value}" for name, value in self.config.items()]


def site_topic(prefix: str, site: str) -> str:
    """The topic of `site`: `<prefix>.<site>`; ConfigError naming the value for a bad site name."""
    if not _TOPIC_CHARS.match(site):
        raise ConfigError(
            f"site name {site!r} must be non-empty and use only letters, digits, '.', '_' and '-'"
        )
    if site in (".", ".."):
        raise ConfigError(f"site name {site!r} is not allowed as a Kafka topic suffix")
    topic = f"{prefix}.{site}"
    if len(topic) > MAX_TOPIC_NAME:
        raise ConfigError(f"topic name {topic!r} is longer than Kafka's {MAX_TOPIC_NAME} chars")
    return topic


def site_topic_pattern(prefix: str) -> str:
    """The consumer's subscription regex for every site topic under `prefix`."""
    # A prefix holds only [A-Za-z0-9._-]; '.' is the one regex metacharacter among them.
    return "^" + re.escape(prefix) + r"\..+"


def expected_topic_config(kafka: KafkaSettings) -> dict[str, str]:
    """The topic-level config every site topic should have."""
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(kafka.segment_ms),
        "min.cleanable.dirty.ratio": str(kafka.min_cleanable_dirty_ratio),
        "min.compaction.lag.ms": str(kafka.min_compaction_lag_ms),
        "delete.retention.ms": str(kafka.delete_retention_ms),
    }


def ensure_site_topic(
    kafka: KafkaSettings, site: str, fix: bool = False, timeout: float | None = None
) -> TopicReport:
    """Create the site's topic, or check that it has the expected config.

    A differing config raises TopicConfigError, or with `fix` is set to the expected values.
    Partition count and replication are only reported: changing them would move keys or data.
    `timeout` bounds each admin request (default ADMIN_TIMEOUT): a caller that retries asks
    for less, to hear sooner that the brokers are out of reach.
    """
    timeout = ADMIN_TIMEOUT if timeout is None else timeout
    topic = site_topic(kafka.topic_prefix, site)
    expected = expected_topic_config(kafka)
    admin = _admin(kafka)
    report = TopicReport(topic)
    new = NewTopic(
        topic,
        num_partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
        config=expected,
    )
    try:
        created = admin.create_topics([new], request_timeout=timeout)[topic]
        _wait(created, f"create {topic}", timeout)
        report.created = True
        wait_until_ready(admin, topic)
        return report
    except _AlreadyExistsError:
        pass
    description = _describe(admin, topic, timeout)
    report.differences = [
        ConfigDifference(name, description.config.get(name), value)
        for name, value in expected.items()
        if not _same(name, description.config.get(name), value)
    ]
    report.notes = _layout_notes(kafka, description)
    if report.differences and not fix:
        raise TopicConfigError(report)
    if report.differences:
        _set_config(admin, topic, {d.setting: d.expected for d in report.differences})
        report.fixed = True
    return report


def ensure_dead_letter_topic(kafka: KafkaSettings, topic: str) -> bool:
    """Create the dead-letter topic if it is missing; True when it was created.

    It is not compacted: dead letters that share a key must all be kept, and they age out by the
    broker's retention. An existing compacted one would lose them, so that is a TopicConfigError.
    """
    admin = _admin(kafka)
    new = NewTopic(
        topic,
        num_partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
        config={"cleanup.policy": "delete"},
    )
    try:
        _wait(admin.create_topics([new], request_timeout=ADMIN_TIMEOUT)[topic], f"create {topic}")
        return True
    except _AlreadyExistsError:
        pass
    policy = _describe(admin, topic).config.get("cleanup.policy")
    if not _same("cleanup.policy", policy, "delete"):
        difference = ConfigDifference("cleanup.policy", policy, "delete")
        remedy = "set it on the broker, or name another consumer.dead_letter_topic"
        raise TopicConfigError(TopicReport(topic, differences=[difference]), remedy)
    return False


def describe_site_topic(kafka: KafkaSettings, site: str) -> TopicDescription:
    """The site topic's partitions and config; KafkaError when it does not exist."""
    return _describe(_admin(kafka), site_topic(kafka.topic_prefix, site))


class _AlreadyExistsError(Exception):
    pass


def wait_until_ready(admin: AdminClient, topic: str, timeout: float = READY_TIMEOUT) -> int:
    """Wait until the metadata shows `topic` with a leader for every partition; returns the
    partition count. KafkaError naming what was missing when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        problem = _not_ready(admin, topic)
        if problem is None:
            return len(admin.list_topics(topic, timeout=ADMIN_TIMEOUT).topics[topic].partitions)
        if time.monotonic() + delay > deadline:
            raise KafkaError(f"topic {topic} not ready after {timeout:.0f} s: {problem}")
        time.sleep(delay)
        delay = min(1.0, delay * 2)


def _not_ready(admin: AdminClient, topic: str) -> str | None:
    """Why `topic` cannot be read yet, or None when every partition has a leader."""
    try:
        found = admin.list_topics(topic, timeout=min(ADMIN_TIMEOUT, 5.0)).topics.get(topic)
    except confluent_kafka.KafkaException as exc:
        return str(exc.args[0] if exc.args else exc)
    if found is None:
        return "not in the metadata"
    if found.error is not None:
        return str(found.error.str())
    if not found.partitions:
        return "no partitions yet"
    for partition in found.partitions.values():
        if partition.error is not None or partition.leader < 0:
            reason = partition.error.str() if partition.error is not None else "no leader"
            return f"partition {partition.id}: {reason}"
    return None


def _admin(kafka: KafkaSettings) -> AdminClient:
    return new_client(AdminClient, kafka.client_config())


def _wait(future: Future[Any], what: str, timeout: float = ADMIN_TIMEOUT) -> Any:
    try:
        return future.result(timeout=timeout)
    except confluent_kafka.KafkaException as exc:
        err = exc.args[0]
        if err.code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            raise _AlreadyExistsError() from exc
        if err.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise KafkaError(f"cannot {what}: the topic does not exist") from exc
        raise KafkaError(f"cannot {what}: {err.str()}") from exc
    except TimeoutError as exc:
        raise KafkaError(f"cannot {what}: no answer within {timeout:.0f} s") from exc


def _describe(admin: AdminClient, topic: str, timeout: float = ADMIN_TIMEOUT) -> TopicDescription:
    topics = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
    found = _wait(topics[topic], f"describe {topic}", timeout)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource], request_timeout=timeout)
    entries = _wait(next(iter(configs.values())), f"describe the config of {topic}", timeout)
    checked = set(expected_topic_config(KafkaSettings()))
    config = {
        name: str(entry.value)
        for name, entry in sorted(entries.items())
        if name in checked or not entry.is_default
    }
    partitions = [
        PartitionInfo(
            p.id,
            None if p.leader is None else p.leader.id,
            [n.id for n in p.replicas],
            [n.id for n in p.isr],
        )
        for p in sorted(found.partitions, key=lambda p: p.id)
    ]
    return TopicDescription(topic, partitions, config)


def _set_config(admin: AdminClient, topic: str, values: dict[str, str]) -> None:
    entries = [
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
        for name, value in values.items()
    ]
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    futures = admin.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT)
    _wait(next(iter(futures.values())), f"set the config of {topic}")


def _same(setting: str, actual: str | None, expected: str) -> bool:
    if actual is None:
        return False
    if setting == "cleanup.policy":
        return {p.strip() for p in actual.split(",")} == {expected}
    try:
        return float(actual) == float(expected)
    except ValueError:
        return actual == expected


def _layout_notes(kafka: KafkaSettings, description: TopicDescription) -> list[str]:
    notes = []
    count = len(description.partitions)
    if count != kafka.partitions:
        notes.append(
            f"{count} partitions, settings say {kafka.partitions} (only used for a new topic: "
            "changing the count would move keys between partitions)"
        )
    replication = min((len(p.replicas) for p in description.partitions), default=0)
    if replication != kafka.replication_factor:
        notes.append(
            f"replication factor {replication}, settings say {kafka.replication_factor} "
            "(only used for a new topic)"
        )
    return notes
