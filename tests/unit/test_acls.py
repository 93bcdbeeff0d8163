"""The ACL tables per role and the replication defaults, without a broker."""

from __future__ import annotations

import pytest

from connector.config import KafkaSettings
from connector.errors import ConfigError
from connector.kafka.acls import Acl, consumer_acls, site_acls
from connector.kafka.topics import replication


def test_a_site_gets_its_own_topic_and_nothing_of_another_site() -> None:
    acls = site_acls(KafkaSettings(), "User:east", "east")
    topics = {a.name for a in acls if a.resource == "topic"}
    assert topics == {"cascade.status.east", "cascade.status-lease.east"}
    assert {a.operation for a in acls if a.name == "cascade.status.east"} == {
        "WRITE",
        "DESCRIBE",
        "READ",
        "CREATE",
        "DESCRIBE_CONFIGS",
    }
    # The election reads its lease topic and joins its group; nothing is written there.
    assert {a.operation for a in acls if a.name == "cascade.status-lease.east"} == {
        "READ",
        "DESCRIBE",
        "CREATE",
    }
    assert all(a.pattern == "literal" and a.principal == "User:east" for a in acls)
    assert Acl("User:east", "cluster", "kafka-cluster", "literal", "IDEMPOTENT_WRITE") in acls
    assert {(a.name, a.operation) for a in acls if a.resource == "group"} == {
        ("cascade-connector-reader", "DESCRIBE"),
        ("cascade.status-lease.east", "READ"),
        ("cascade.status-lease.east", "DESCRIBE"),
    }
    # Fencing: the site's transactional id, and no other site's.
    assert {(a.name, a.operation) for a in acls if a.resource == "transactional_id"} == {
        ("cascade.status.east", "WRITE"),
        ("cascade.status.east", "DESCRIBE"),
    }


def test_the_consumer_reads_the_prefix_its_group_and_writes_dead_letters() -> None:
    acls = consumer_acls(KafkaSettings(topic_prefix="p"), "User:top", "g", "dlq")
    assert Acl("User:top", "topic", "p.", "prefixed", "READ") in acls
    assert Acl("User:top", "group", "g", "literal", "READ") in acls
    assert Acl("User:top", "topic", "dlq", "literal", "WRITE") in acls
    assert not any(a.operation == "WRITE" and a.name == "p." for a in acls)


def test_a_principal_must_be_type_and_name() -> None:
    with pytest.raises(ConfigError, match="User:site-a"):
        site_acls(KafkaSettings(), "site-a", "east")


@pytest.mark.parametrize(
    ("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))]
)
def test_replication_fits_the_cluster(brokers: int, expected: tuple[int, int]) -> None:
    assert replication(KafkaSettings(), brokers) == expected


def test_replication_settings_win_and_are_checked() -> None:
    assert replication(KafkaSettings(replication_factor=2), 5) == (2, 1)
    assert replication(KafkaSettings(min_insync_replicas=3), 5) == (3, 3)
    with pytest.raises(ConfigError, match="min_insync_replicas"):
        replication(KafkaSettings(replication_factor=1, min_insync_replicas=2), 3)
