"""The exception tree: one root, ConnectorError, and a few subclasses that carry meaning.

Each subclass has an exit code, so the CLI maps a failure onto a process status without
knowing where it came from.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""

    exit_code = 1


class ConfigError(ConnectorError):
    """A setting is missing or has a wrong value; the message names the field."""

    exit_code = 2


class LocalKafkaError(ConnectorError):
    """The development broker could not be fetched, started, or stopped."""

    exit_code = 3


class KafkaError(ConnectorError):
    """Kafka refused or failed an operation (admin, produce, commit)."""

    exit_code = 4


class KafkaAccessError(KafkaError):
    """Kafka refused these credentials: authentication, TLS trust or authorization. Retrying
    cannot mend it, so a process that retries transient Kafka trouble ends on this one."""
