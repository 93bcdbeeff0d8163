"""The ACLs each role needs, as declared tables, and the admin work that grants and checks them.

A role's table lists (resource type, name, pattern, operations, why); names are templates filled
from the deployment (`{site_topic}`, `{lease_topic}`, `{topic_prefix}`, `{site}`, `{group}`,
`{dead_letter_topic}`), so a new need is one more row. `ensure_acls` grants a table to a
principal that has no ACLs yet; for one that has, it reports every missing and every extra ACL
(the principal's ACLs outside its table), and with `fix` adds and removes them, as
`topics ensure` does for a topic's config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient

# From their defining modules: confluent_kafka.admin re-exports them implicitly only, which
# mypy's strict mode does not accept.
from confluent_kafka.admin._acl import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
)
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

from connector.errors import ConfigError, ConnectorError, KafkaError
from connector.kafka.errors import connected_admin, not_authorized
from connector.kafka.reader import READER_GROUP
from connector.kafka.settings import KafkaSettings
from connector.kafka.topics import lease_topic, site_topic

#: Seconds an ACL request may take before it counts as Kafka trouble.
ACL_TIMEOUT = 30.0
CLUSTER = "kafka-cluster"  # the one name of the cluster resource


@dataclass(frozen=True)
class Grant:
    """One row of a role's table: `operations` allowed on a resource."""

    resource: str  #: topic, group, cluster, transactional_id
    name: str  #: a template filled from the deployment's names
    pattern: str  #: literal, or prefixed (every name starting with `name`)
    operations: tuple[str, ...]  #: Kafka ACL operations (WRITE, READ, DESCRIBE, ...)
    why: str


#: What one site's poller (`produce`) does, and so needs: nothing about other sites.
SITE_ACLS: tuple[Grant, ...] = (
    Grant("topic", "{site_topic}", "literal", ("WRITE", "DESCRIBE"), "publish changes"),
    Grant("topic", "{site_topic}", "literal", ("READ",), "restore state from the topic at start"),
    Grant(
        "topic",
        "{site_topic}",
        "literal",
        ("CREATE", "DESCRIBE_CONFIGS"),
        "create the topic if missing, check its config",
    ),
    Grant(
        "group",
        READER_GROUP,
        "literal",
        ("DESCRIBE",),
        "restore reads without joining a group, but librdkafka looks up its group's coordinator",
    ),
    Grant(
        "cluster",
        CLUSTER,
        "literal",
        ("IDEMPOTENT_WRITE",),
        "idempotent producer (required by brokers before 2.8)",
    ),
    Grant(
        "topic",
        "{lease_topic}",
        "literal",
        ("READ", "DESCRIBE", "CREATE"),
        "join the site's election (docs/ha.md); create the lease topic if missing",
    ),
    Grant(
        "group",
        "{lease_topic}",
        "literal",
        ("READ", "DESCRIBE"),
        "the lease group: one publishing poller per site",
    ),
    Grant(
        "transactional_id",
        "{site_topic}",
        "literal",
        ("WRITE", "DESCRIBE"),
        "publish in transactions; a take-over fences the old producer",
    ),
)

#: What the top consumer (`consume`) does: read every site topic in its group, dead-letter.
CONSUMER_ACLS: tuple[Grant, ...] = (
    Grant(
        "topic",
        "{topic_prefix}.",
        "prefixed",
        ("READ", "DESCRIBE"),
        "read every site topic (regex subscription)",
    ),
    Grant("group", "{group}", "literal", ("READ",), "join the group, commit and fetch offsets"),
    Grant(
        "topic",
        "{dead_letter_topic}",
        "literal",
        ("WRITE", "DESCRIBE", "CREATE", "DESCRIBE_CONFIGS"),
        "create, check and write the dead-letter topic",
    ),
    Grant("cluster", CLUSTER, "literal", ("IDEMPOTENT_WRITE",), "idempotent dead-letter producer"),
)

_RESOURCES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "cluster": ResourceType.BROKER,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
}
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW entry, in our words: principal may `operation` on resource `name`."""

    principal: str
    resource: str
    name: str
    pattern: str
    operation: str
    host: str = "*"

    def __str__(self) -> str:
        where = f"{self.resource} {self.name}" + (" (prefix)" if self.pattern == "prefixed" else "")
        host = "" if self.host == "*" else f" from {self.host}"
        return f"ALLOW {self.principal} {self.operation} on {where}{host}"


class AclDriftError(ConnectorError):
    """A principal's ACLs differ from its role's table."""

    def __init__(self, report: AclReport) -> None:
        super().__init__(
            f"ACLs of {report.principal} differ: "
            + "; ".join(report.lines())
            + " (`cascade-connector acls ensure --fix` applies the table)"
        )
        self.report = report


@dataclass
class AclReport:
    """What `ensure_acls` found and did."""

    principal: str
    created: list[Acl] = field(default_factory=list)
    missing: list[Acl] = field(default_factory=list)
    extra: list[Acl] = field(default_factory=list)
    fixed: bool = False

    def lines(self) -> list[str]:
        if self.created:
            return [f"granted: {acl}" for acl in self.created]
        if not self.missing and not self.extra:
            return [f"{self.principal} has exactly the expected ACLs"]
        added, removed = ("added", "removed") if self.fixed else ("missing", "extra")
        return [f"{added}: {acl}" for acl in self.missing] + [
            f"{removed}: {acl}" for acl in self.extra
        ]


def site_acls(kafka: KafkaSettings, principal: str, site: str) -> list[Acl]:
    """The ACLs of one site's poller."""
    names = {
        "site": site,
        "site_topic": site_topic(kafka.topic_prefix, site),
        "lease_topic": lease_topic(kafka.topic_prefix, site),
    }
    return expand(SITE_ACLS, principal, names)


def consumer_acls(
    kafka: KafkaSettings, principal: str, group: str, dead_letter_topic: str
) -> list[Acl]:
    """The ACLs of the top consumer in `group`."""
    names = {
        "topic_prefix": kafka.topic_prefix,
        "group": group,
        "dead_letter_topic": dead_letter_topic,
    }
    return expand(CONSUMER_ACLS, principal, names)


def expand(table: Sequence[Grant], principal: str, names: Mapping[str, str]) -> list[Acl]:
    """One Acl per operation of every row, names filled in."""
    check_principal(principal)
    return sorted(
        {
            Acl(principal, grant.resource, grant.name.format(**names), grant.pattern, operation)
            for grant in table
            for operation in grant.operations
        }
    )


def check_principal(principal: str) -> None:
    kind, sep, name = principal.partition(":")
    if not sep or not kind or not name:
        raise ConfigError(f"--principal: expected TYPE:NAME such as User:site-a, got {principal!r}")


def ensure_acls(kafka: KafkaSettings, expected: list[Acl], fix: bool = False) -> AclReport:
    """Grant `expected` to its principal when it has no ACLs; otherwise report every missing and
    extra ACL, raising AclDriftError unless `fix`, which adds and removes them."""
    principal = expected[0].principal
    admin = connected_admin(kafka, ACL_TIMEOUT)
    existing = set(describe_acls(kafka, principal, admin))
    report = AclReport(principal)
    if not existing:
        _create(kafka, admin, expected)
        report.created = expected
        return report
    report.missing = sorted(set(expected) - existing)
    report.extra = sorted(existing - set(expected))
    if (report.missing or report.extra) and not fix:
        raise AclDriftError(report)
    if report.missing:
        _create(kafka, admin, report.missing)
    if report.extra:
        _delete(kafka, admin, report.extra)
    report.fixed = bool(report.missing or report.extra)
    return report


def describe_acls(
    kafka: KafkaSettings, principal: str | None = None, admin: AdminClient | None = None
) -> list[Acl]:
    """Every ALLOW ACL of `principal` (every principal's when None), sorted."""
    if principal is not None:
        check_principal(principal)
    admin = admin or connected_admin(kafka, ACL_TIMEOUT)
    # None matches anything; confluent-kafka's annotations say str, its code accepts None.
    anything: Any = None
    query = AclBindingFilter(
        ResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        principal or anything,
        anything,
        AclOperation.ANY,
        AclPermissionType.ALLOW,
    )
    found = _wait(kafka, admin.describe_acls(query, request_timeout=ACL_TIMEOUT), "describe ACLs")
    return sorted(_from_binding(b) for b in found)


def _create(kafka: KafkaSettings, admin: AdminClient, acls: list[Acl]) -> None:
    futures = admin.create_acls([_binding(a) for a in acls], request_timeout=ACL_TIMEOUT)
    for future in futures.values():
        _wait(kafka, future, "create ACLs")


def _delete(kafka: KafkaSettings, admin: AdminClient, acls: list[Acl]) -> None:
    filters = [_binding(a, filter_=True) for a in acls]
    for future in admin.delete_acls(filters, request_timeout=ACL_TIMEOUT).values():
        _wait(kafka, future, "delete ACLs")


def _binding(acl: Acl, filter_: bool = False) -> Any:
    kind = AclBindingFilter if filter_ else AclBinding
    return kind(
        _RESOURCES[acl.resource],
        acl.name,
        _PATTERNS[acl.pattern],
        acl.principal,
        acl.host,
        AclOperation[acl.operation],
        AclPermissionType.ALLOW,
    )


def _from_binding(binding: Any) -> Acl:
    resource = binding.restype.name
    ours = {kafka.name: name for name, kafka in _RESOURCES.items()}.get(resource, resource.lower())
    return Acl(
        binding.principal,
        ours,
        binding.name,
        binding.resource_pattern_type.name.lower(),
        binding.operation.name,
        binding.host,
    )


def _wait(kafka: KafkaSettings, future: Any, what: str) -> Any:
    try:
        return future.result(timeout=ACL_TIMEOUT)
    except confluent_kafka.KafkaException as exc:
        err = exc.args[0]
        raise not_authorized(kafka, what, err) or KafkaError(f"cannot {what}: {err.str()}") from exc
    except TimeoutError as exc:
        raise KafkaError(f"cannot {what}: no answer within {ACL_TIMEOUT:.0f} s") from exc
