"""The Kafka layer's own settings: how to reach the brokers, the site topics' names and config.

This package owns the type; `connector.config` places it under `[kafka]` in the app's settings,
so nothing under `connector/kafka/` depends on the rest of the app's configuration.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class KafkaSettings(BaseModel):
    """How to reach Kafka and name the topics."""

    # As every settings section: unknown keys are errors, never silently dropped; no inf or NaN.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: Comma-separated host:port list, librdkafka's `bootstrap.servers`.
    bootstrap: str = Field(default="127.0.0.1:9092", min_length=1)
    #: Site topics are `<topic_prefix>.<site>`.
    topic_prefix: str = Field(default="cascade.status", pattern=r"^[A-Za-z0-9._-]+$")
    #: Partitions of a new site topic.
    partitions: int = Field(default=3, ge=1, le=1000)
    #: Replication factor of a new site topic.
    replication_factor: int = Field(default=1, ge=1, le=16)
    #: Site topic `segment.ms`: compaction never touches the active segment, so a short one lets
    #: the cleaner collapse a burst within minutes.
    segment_ms: int = Field(default=60_000, ge=1_000)
    #: Site topic `min.cleanable.dirty.ratio`: low, so the cleaner runs on a little churn.
    min_cleanable_dirty_ratio: float = Field(default=0.1, gt=0.0, le=1.0)
    #: Site topic `min.compaction.lag.ms`: how long a record is safe from compaction.
    min_compaction_lag_ms: int = Field(default=0, ge=0)
    #: Site topic `delete.retention.ms`: how long tombstones stay readable; two days, so a top
    #: layer that was down for a day still sees the deletions.
    delete_retention_ms: int = Field(default=172_800_000, ge=0)
    #: Confluent Schema Registry URL; when set, values use its framing (magic byte + schema id)
    #: instead of Avro single-object encoding.
    schema_registry_url: str | None = Field(default=None, pattern=r"^https?://")
    #: Extra librdkafka settings, passed through unchanged (`-X key=value` on the CLI).
    librdkafka: dict[str, str] = Field(default_factory=dict)

    @field_validator("bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap, then the passthrough keys, then `overrides`."""
        return {"bootstrap.servers": self.bootstrap, **self.librdkafka, **overrides}
