"""Cluster-wide admin: which brokers are live, which partitions lack in-sync replicas, and SCRAM
users' credentials."""

from __future__ import annotations

import confluent_kafka
from confluent_kafka.admin import AdminClient

# From their defining module: confluent_kafka.admin re-exports them implicitly only, which
# mypy's strict mode does not accept.
from confluent_kafka.admin._scram import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from connector.kafka.errors import admin_result
from connector.kafka.settings import KafkaSettings

#: SCRAM iterations of a new credential (Kafka's minimum for SHA-512 is 4096).
SCRAM_ITERATIONS = 8192


def broker_ids(kafka: KafkaSettings, timeout: float, quiet: bool = False) -> set[int]:
    """Ids of the brokers the cluster's metadata lists now (live, registered brokers); `quiet`
    keeps librdkafka from logging connection failures (a cluster that is starting)."""
    metadata = admin_result(
        kafka.model_copy(update={"librdkafka": {**kafka.librdkafka, "log_level": "0"}})
        if quiet
        else kafka,
        "read the cluster metadata",
        lambda admin: admin.list_topics(timeout=timeout),
        timeout,
    )
    return set(metadata.brokers)


def under_replicated(kafka: KafkaSettings, timeout: float) -> list[str]:
    """`topic[partition]` of every partition with fewer in-sync replicas than replicas."""
    metadata = admin_result(
        kafka,
        "read the cluster metadata",
        lambda admin: admin.list_topics(timeout=timeout),
        timeout,
    )
    return sorted(
        f"{name}[{p.id}]"
        for name, topic in metadata.topics.items()
        for p in topic.partitions.values()
        if len(p.isrs) < len(p.replicas)
    )


def set_scram_password(kafka: KafkaSettings, user: str, password: str, mechanism: str) -> None:
    """Create SCRAM user `user`, or give it a new password (`mechanism`: SCRAM-SHA-512/256)."""
    info = ScramCredentialInfo(
        getattr(ScramMechanism, mechanism.replace("-", "_")), SCRAM_ITERATIONS
    )
    upsert = UserScramCredentialUpsertion(user, info, password.encode())

    def alter(admin: AdminClient) -> object:
        futures = admin.alter_user_scram_credentials([upsert], request_timeout=30.0)
        return futures[user].result(timeout=30.0)

    admin_result(kafka, f"set the SCRAM credentials of user {user}", alter, 30.0)


def delete_group(kafka: KafkaSettings, group: str) -> bool:
    """Delete consumer group `group` and its committed offsets (it must have no members); False
    when there was no such group."""

    def delete(admin: AdminClient) -> bool:
        future = admin.delete_consumer_groups([group], request_timeout=30.0)[group]
        try:
            future.result(timeout=30.0)
        except confluent_kafka.KafkaException as exc:
            if exc.args[0].code() == confluent_kafka.KafkaError.GROUP_ID_NOT_FOUND:
                return False
            raise
        return True

    return bool(admin_result(kafka, f"delete consumer group {group}", delete, 30.0))
