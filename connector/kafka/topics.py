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
from connector.kafka.errors import connected_admin, not_authorized
from connector.kafka.settings import KafkaSettings

#: Characters Kafka allows in a topic name; a site name becomes the suffix of its topic.
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
#: Kafka's limit on a topic name's length.
MAX_TOPIC_NAME = 249
#: Topics per create request: a KRaft controller refuses a request that makes more than 10,000
#: metadata records ("excessively large batch operation"), and a site topic makes one for
#: itself, one per partition and one per config setting (about 10 at the defaults).
CREATE_BATCH = 200


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


def lease_topic(prefix: str, site: str) -> str:
    """The one-partition topic, and the group, through which the pollers of `site` elect the
    one that publishes: `<prefix>-lease.<site>`. The `-` right after the prefix keeps it out of
    the consumer's subscription (`site_topic_pattern` wants a `.` there)."""
    site_topic(prefix, site)  # the same checks of the site name
    topic = f"{prefix}-lease.{site}"
    if len(topic) > MAX_TOPIC_NAME:
        raise ConfigError(f"topic name {topic!r} is longer than Kafka's {MAX_TOPIC_NAME} chars")
    return topic


def site_topic_pattern(prefix: str) -> str:
    """The consumer's subscription regex for every site topic under `prefix`."""
    # A prefix holds only [A-Za-z0-9._-]; '.' is the one regex metacharacter among them.
    return "^" + re.escape(prefix) + r"\..+"


def expected_topic_config(kafka: KafkaSettings, in_sync: int) -> dict[str, str]:
    """The topic-level config every site topic should have (`in_sync`: its min.insync.replicas,
    from `replication`)."""
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(kafka.segment_ms),
        "min.cleanable.dirty.ratio": str(kafka.min_cleanable_dirty_ratio),
        "min.compaction.lag.ms": str(kafka.min_compaction_lag_ms),
        "delete.retention.ms": str(kafka.delete_retention_ms),
        "min.insync.replicas": str(in_sync),
    }


#: The settings `describe` always shows, default or not: the ones the connector checks.
CHECKED = tuple(expected_topic_config(KafkaSettings(), 1))


def replication(kafka: KafkaSettings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a new topic on a cluster of `brokers`: the
    settings, or when unset min(3, brokers) replicas and 2 in sync from 3 replicas on (else 1),
    so one broker may be down while every acknowledged write (acks=all) is on two."""
    replicas = kafka.replication_factor or max(1, min(3, brokers))
    in_sync = kafka.min_insync_replicas or (2 if replicas >= 3 else 1)
    if in_sync > replicas:
        raise ConfigError(
            f"kafka.min_insync_replicas: {in_sync} is more than the replication factor "
            f"{replicas}; no write could ever be acknowledged"
        )
    return replicas, in_sync


def ensure_site_topic(kafka: KafkaSettings, site: str, fix: bool = False) -> TopicReport:
    """Create the site's topic, or check that it has the expected config (`ensure_site_topics`
    for one site)."""
    return ensure_site_topics(kafka, [site], fix)[0]


def ensure_site_topics(
    kafka: KafkaSettings, sites: list[str], fix: bool = False
) -> list[TopicReport]:
    """Create the sites' topics, or check that they have the expected config; a report per
    site, in order.

    One admin client for all of them, the create requests (CREATE_BATCH topics each) sent at
    once, then one request to describe those that existed and one for their configs: a client
    per topic made creating a thousand sites' topics take minutes (docs/performance.md). A
    differing config raises TopicConfigError for the first such topic, or with `fix` is set to
    the expected values. Partition count and
    replication are only reported: changing them would move keys or data.
    """
    topics = [site_topic(kafka.topic_prefix, site) for site in sites]
    admin = _admin(kafka)
    brokers = _broker_count(kafka, admin)
    replicas, in_sync = replication(kafka, brokers)
    expected = expected_topic_config(kafka, in_sync)
    new = [
        NewTopic(t, num_partitions=kafka.partitions, replication_factor=replicas, config=expected)
        for t in topics
    ]
    created = _create_many(kafka, admin, new)
    existing = [t for t in topics if t not in created]
    descriptions = _describe_many(kafka, admin, existing)
    reports = {t: TopicReport(t, created=True) for t in created}
    for topic in existing:
        description = descriptions[topic]
        # The topic's own replication decides what min.insync.replicas it can have.
        actual = min((len(p.replicas) for p in description.partitions), default=replicas)
        _, in_sync = replication(kafka.model_copy(update={"replication_factor": actual}), brokers)
        wanted = expected_topic_config(kafka, in_sync)
        report = TopicReport(topic)
        report.differences = [
            ConfigDifference(name, description.config.get(name), value)
            for name, value in wanted.items()
            if not _same(name, description.config.get(name), value)
        ]
        report.notes = _layout_notes(kafka, description, replicas)
        if report.differences and not fix:
            raise TopicConfigError(report)
        if report.differences:
            _set_config(kafka, admin, topic, {d.setting: d.expected for d in report.differences})
            report.fixed = True
        reports[topic] = report
    return [reports[t] for t in topics]


def ensure_lease_topic(kafka: KafkaSettings, site: str) -> TopicReport:
    """Create the site's lease topic (one partition) if it is missing (`ensure_lease_topics`
    for one site)."""
    return ensure_lease_topics(kafka, [site])[0]


def ensure_lease_topics(kafka: KafkaSettings, sites: list[str]) -> list[TopicReport]:
    """Create the sites' lease topics (one partition each) that are missing, in one request.

    Nothing is ever written to them: the pollers only join a lease topic's group, and the
    member given its partition 0 publishes. More partitions would not elect more publishers
    (only partition 0 counts), so a different count is only noted.
    """
    topics = [lease_topic(kafka.topic_prefix, site) for site in sites]
    admin = _admin(kafka)
    replicas, _in_sync = replication(kafka, _broker_count(kafka, admin))
    created = _create_many(
        kafka, admin, [NewTopic(t, num_partitions=1, replication_factor=replicas) for t in topics]
    )
    # Their partitions only: their config is not checked, and a poller's ACLs (acls.py) do not
    # let it describe the config of the lease topic.
    existing = _describe_many(kafka, admin, [t for t in topics if t not in created], config=False)
    reports = []
    for topic in topics:
        report = TopicReport(topic, created=topic in created)
        count = len(existing[topic].partitions) if topic in existing else 1
        if count != 1:
            report.notes.append(f"{count} partitions, expected 1 (only partition 0 elects)")
        reports.append(report)
    return reports


def ensure_dead_letter_topic(kafka: KafkaSettings, topic: str) -> bool:
    """Create the dead-letter topic if it is missing; True when it was created.

    It is not compacted: dead letters that share a key must all be kept, and they age out by the
    broker's retention. An existing compacted one would lose them, so that is a TopicConfigError.
    """
    admin = _admin(kafka)
    replicas, in_sync = replication(kafka, _broker_count(kafka, admin))
    new = NewTopic(
        topic,
        num_partitions=kafka.partitions,
        replication_factor=replicas,
        config={"cleanup.policy": "delete", "min.insync.replicas": str(in_sync)},
    )
    try:
        _wait(
            kafka,
            admin.create_topics([new], request_timeout=kafka.admin_timeout)[topic],
            f"create {topic}",
        )
        created = True
    except _AlreadyExistsError:
        created = False
    # Described next (here, or its max.message.bytes by `producer_limits`): a topic just created
    # is "unknown" to the broker until its metadata lists it, and one that already exists may
    # have been created a moment ago by another member of the group, starting at once.
    _wait_until_visible(kafka, admin, {topic})
    if created:
        return True
    policy = _describe(kafka, admin, topic).config.get("cleanup.policy")
    if not _same("cleanup.policy", policy, "delete"):
        difference = ConfigDifference("cleanup.policy", policy, "delete")
        remedy = "set it on the broker, or name another consumer.dead_letter_topic"
        raise TopicConfigError(TopicReport(topic, differences=[difference]), remedy)
    return False


#: librdkafka's default message.max.bytes: the largest message a producer queues, unless the
#: topic it writes takes less (`producer_limits`).
PRODUCER_MAX_MESSAGE = 1_000_000


def producer_limits(kafka: KafkaSettings, topic: str) -> dict[str, int]:
    """librdkafka settings that keep a producer's messages and batches within what `topic`
    accepts: its max.message.bytes (the broker's default unless set), at most
    PRODUCER_MAX_MESSAGE. A larger message is then refused when it is queued (MessageRefused:
    the caller skips that one), not by the broker, which refuses the whole batch it is in, the
    good records with it, and makes a transaction holding them abort."""
    admin = _admin(kafka)  # held until the answer came: a client dropped answers nothing
    future = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, topic)], request_timeout=kafka.admin_timeout
    )
    entries = _wait(kafka, next(iter(future.values())), f"describe the config of {topic}")
    entry = entries.get("max.message.bytes")
    limit = PRODUCER_MAX_MESSAGE if entry is None else min(int(entry.value), PRODUCER_MAX_MESSAGE)
    return {"message.max.bytes": limit, "batch.size": limit}


def describe_site_topic(kafka: KafkaSettings, site: str) -> TopicDescription:
    """The site topic's partitions and config; KafkaError when it does not exist."""
    return _describe(kafka, _admin(kafka), site_topic(kafka.topic_prefix, site))


class _AlreadyExistsError(Exception):
    pass


def _admin(kafka: KafkaSettings) -> AdminClient:
    return connected_admin(kafka, kafka.admin_timeout)


def _broker_count(kafka: KafkaSettings, admin: AdminClient) -> int:
    try:
        return len(admin.list_topics(timeout=kafka.admin_timeout).brokers)
    except confluent_kafka.KafkaException as exc:
        raise KafkaError(f"cannot count the brokers: {exc.args[0].str()}") from exc


def _create_many(kafka: KafkaSettings, admin: AdminClient, new: list[NewTopic]) -> set[str]:
    """Create the topics of `new` (CREATE_BATCH to a request) and wait until every partition of
    each has a leader, those that already existed too (another process may have created one a
    moment ago: its callers describe them next); the names of those created."""
    futures: dict[str, Future[None]] = {}
    for start in range(0, len(new), CREATE_BATCH):  # sent at once, answered in any order
        chunk = new[start : start + CREATE_BATCH]
        futures |= admin.create_topics(chunk, request_timeout=kafka.admin_timeout)
    created = set()
    for topic, future in futures.items():
        try:
            _wait(kafka, future, f"create {topic}")
        except _AlreadyExistsError:
            continue
        created.add(topic)
    _wait_until_visible(kafka, admin, set(futures))
    return created


def _wait_until_visible(kafka: KafkaSettings, admin: AdminClient, topics: set[str]) -> None:
    """Return once the broker's metadata lists every partition of `topics` with a leader: until
    then a reader of a topic just created (the poller's restore) gets "unknown topic or
    partition", and describing it, "unknown"."""
    timeout = kafka.admin_timeout
    deadline = time.monotonic() + timeout
    delay = 0.02
    waiting = set(topics)
    while waiting:
        # One topic is asked by name; several at once through the whole cluster's metadata.
        only = next(iter(waiting)) if len(waiting) == 1 else None
        listed = admin.list_topics(only, timeout=timeout).topics
        for topic in list(waiting):
            found = listed.get(topic)
            partitions = found.partitions.values() if found and found.error is None else []
            if partitions and all(p.leader >= 0 for p in partitions):
                waiting.discard(topic)
        if not waiting:
            return
        if time.monotonic() + delay > deadline:
            names = ", ".join(sorted(waiting)[:5]) + (" ..." if len(waiting) > 5 else "")
            raise KafkaError(
                f"create {names}: not in the metadata with a leader for every partition after "
                f"{timeout:g} s"
            )
        time.sleep(delay)
        delay = min(0.5, delay * 2)


def _wait(kafka: KafkaSettings, future: Future[Any], what: str) -> Any:
    try:
        return future.result(timeout=kafka.admin_timeout)
    except confluent_kafka.KafkaException as exc:
        err = exc.args[0]
        if err.code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            raise _AlreadyExistsError() from exc
        if err.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise KafkaError(f"cannot {what}: the topic does not exist") from exc
        raise not_authorized(kafka, what, err) or KafkaError(f"cannot {what}: {err.str()}") from exc
    except TimeoutError as exc:
        raise KafkaError(f"cannot {what}: no answer within {kafka.admin_timeout:g} s") from exc


def _describe(
    kafka: KafkaSettings, admin: AdminClient, topic: str, config: bool = True
) -> TopicDescription:
    """The topic's partitions, and (with `config`) its checked and non-default settings."""
    return _describe_many(kafka, admin, [topic], config)[topic]


def _describe_many(
    kafka: KafkaSettings, admin: AdminClient, topics: list[str], config: bool = True
) -> dict[str, TopicDescription]:
    """Each topic's partitions, and (with `config`) its checked and non-default settings: one
    request for the partitions and one for the configs, whatever the number of topics."""
    if not topics:
        return {}
    found = admin.describe_topics(TopicCollection(topics), request_timeout=kafka.admin_timeout)
    settings: dict[str, dict[str, str]] = {t: {} for t in topics}
    if config:
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
        configs = admin.describe_configs(resources, request_timeout=kafka.admin_timeout)
        for resource, future in configs.items():
            entries = _wait(kafka, future, f"describe the config of {resource.name}")
            settings[resource.name] = {
                name: str(entry.value)
                for name, entry in sorted(entries.items())
                if name in CHECKED or not entry.is_default
            }
    out = {}
    for topic in topics:
        description = _wait(kafka, found[topic], f"describe {topic}")
        partitions = [
            PartitionInfo(
                p.id,
                None if p.leader is None else p.leader.id,
                [n.id for n in p.replicas],
                [n.id for n in p.isr],
            )
            for p in sorted(description.partitions, key=lambda p: p.id)
        ]
        out[topic] = TopicDescription(topic, partitions, settings[topic])
    return out


def _set_config(
    kafka: KafkaSettings, admin: AdminClient, topic: str, values: dict[str, str]
) -> None:
    entries = [
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
        for name, value in values.items()
    ]
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    futures = admin.incremental_alter_configs([resource], request_timeout=kafka.admin_timeout)
    _wait(kafka, next(iter(futures.values())), f"set the config of {topic}")


def _same(setting: str, actual: str | None, expected: str) -> bool:
    if actual is None:
        return False
    if setting == "cleanup.policy":
        return {p.strip() for p in actual.split(",")} == {expected}
    try:
        return float(actual) == float(expected)
    except ValueError:
        return actual == expected


def _layout_notes(kafka: KafkaSettings, description: TopicDescription, replicas: int) -> list[str]:
    notes = []
    count = len(description.partitions)
    if count != kafka.partitions:
        notes.append(
            f"{count} partitions, settings say {kafka.partitions} (only used for a new topic: "
            "changing the count would move keys between partitions)"
        )
    replication = min((len(p.replicas) for p in description.partitions), default=0)
    if replication != replicas:
        source = "settings say" if kafka.replication_factor else "the cluster's default is"
        notes.append(
            f"replication factor {replication}, {source} {replicas} (only used for a new topic; "
            "kafka-reassign-partitions changes it)"
        )
    return notes
