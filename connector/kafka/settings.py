"""The Kafka layer's own settings: how to reach the brokers, the site topics' names and config.

This package owns the type; `connector.config` places it under `[kafka]` in the app's settings,
so nothing under `connector/kafka/` depends on the rest of the app's configuration.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


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
    #: Replication factor of a new site (or dead-letter) topic; unset: min(3, brokers).
    replication_factor: int | None = Field(default=None, ge=1, le=16)
    #: Site topic `min.insync.replicas`; unset: 2 when the topic has 3 or more replicas, else 1.
    #: With acks=all, a write is acknowledged only once this many replicas have it.
    min_insync_replicas: int | None = Field(default=None, ge=1, le=16)
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
    #: librdkafka's `security.protocol`; unset: librdkafka's default (PLAINTEXT).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    #: librdkafka's `sasl.mechanism` (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN, ...).
    sasl_mechanism: str | None = Field(default=None, min_length=1)
    #: SASL user name (`sasl.username`); also named in authentication errors.
    sasl_username: str | None = Field(default=None, min_length=1)
    #: SASL password (`sasl.password`); never printed or logged.
    sasl_password: SecretStr | None = None
    #: File of the CA certificate(s) that signed the brokers' certificates (`ssl.ca.location`).
    ssl_ca_location: str | None = Field(default=None, min_length=1)
    #: Mutual TLS: this client's certificate file (`ssl.certificate.location`).
    ssl_certificate_location: str | None = Field(default=None, min_length=1)
    #: Mutual TLS: this client's private key file (`ssl.key.location`).
    ssl_key_location: str | None = Field(default=None, min_length=1)
    #: Mutual TLS: the password of an encrypted private key (`ssl.key.password`); never printed.
    ssl_key_password: SecretStr | None = None
    #: Seconds an admin request (creating or checking a topic, counting the brokers) may take
    #: before it counts as Kafka trouble: a poller started while Kafka is down reports it
    #: (degraded, retrying) after this long.
    admin_timeout: float = Field(default=30.0, gt=0.0, le=600.0)
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
        """librdkafka configuration: bootstrap and security, then the passthrough keys, then
        `overrides`."""
        security = {
            librdkafka_key: value.get_secret_value() if isinstance(value, SecretStr) else value
            for librdkafka_key, value in (
                ("security.protocol", self.security_protocol),
                ("sasl.mechanism", self.sasl_mechanism),
                ("sasl.username", self.sasl_username),
                ("sasl.password", self.sasl_password),
                ("ssl.ca.location", self.ssl_ca_location),
                ("ssl.certificate.location", self.ssl_certificate_location),
                ("ssl.key.location", self.ssl_key_location),
                ("ssl.key.password", self.ssl_key_password),
            )
            if value is not None
        }
        return {"bootstrap.servers": self.bootstrap, **security, **self.librdkafka, **overrides}

    @property
    def user(self) -> str | None:
        """The SASL user these settings log in as, for error messages."""
        return self.sasl_username or self.librdkafka.get("sasl.username")
