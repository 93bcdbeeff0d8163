"""Errors of the records layer: a value that cannot be decoded or encoded, a registry in trouble.

DecodeError means the bytes are bad: retrying will not help, the record belongs in the dead-letter
topic (WrongSiteError, a DecodeError, when it speaks for a site its topic is not). RegistryError
means the bytes may be fine but the schema registry could not
answer: retry later, never dead-letter the record for it.
"""

from __future__ import annotations

from connector.errors import ConnectorError, KafkaError


class DecodeError(ConnectorError):
    """A Kafka record that is not a valid StatusRecord (or tombstone); `reason` says why."""

    #: the dead letter's reason: a short, low-cardinality category (for metrics)
    category = "decode"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WrongSiteError(DecodeError):
    """A record in one site's topic that speaks for another site (its key names another site,
    or a heartbeat names another site as its id): it must change nothing there."""

    category = "wrong site"


class EncodeError(ConnectorError):
    """A StatusRecord that cannot be written (a naive time, a detail value of an unknown type)."""


class RegistryError(KafkaError):
    """The schema registry could not be reached or refused a request that should have worked."""
