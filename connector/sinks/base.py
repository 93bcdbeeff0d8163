"""The sink interface the top consumer drives, and the errors a sink uses to talk back.

A sink applies a batch (at most one change per key) in one transaction and returns what it wrote.
It never commits Kafka offsets; the consumer does that after `apply` returns. A sink may keep the
consumer group's offsets itself (the SQL sink does): it stores the `Progress` handed with a batch
in that batch's transaction, and `stored_offsets` says where reading resumes, so the database,
not Kafka, decides what is read again after a restore from a backup (connector/top/offsets.py).
It says "slow down" by raising SinkBackpressureError; the consumer pauses, seeks back and
retries, committing nothing. Every call keeps within a time budget below the group's poll
interval, and gives up early when interrupted: both end as SinkBackpressureError, never as a
hang.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from connector.errors import ConnectorError
from connector.records.model import Change


class SinkError(ConnectorError):
    """The sink failed in a way retrying will not fix (bad URL, schema mismatch, auth)."""


class SinkBackpressureError(ConnectorError):
    """The top layer is busy or briefly unavailable; retry the same batch after `retry_after` s.

    Not a SinkError: code that gives up on a SinkError ("retrying will not fix it") must not
    give up on a sink that only asked to wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"SinkBackpressureError({self.args[0]!r}, retry_after={self.retry_after})"


#: A partition of a site topic, as the consumer names it: (topic, partition number).
SitePartition = tuple[str, int]


@dataclass(frozen=True)
class Progress:
    """Where a consumer group's reading resumes once a batch is applied: the next offset to read
    of each partition whose every change before it is then applied."""

    group: str
    offsets: Mapping[SitePartition, int]


@dataclass
class ApplyResult:
    """What one `apply` did."""

    #: rows (or top-layer objects) actually changed; records older than what the sink holds
    #: are skipped and not counted
    written: int
    #: changes the sink refused for good, each with the reason; they go to the dead-letter topic
    rejected: list[tuple[Change, str]] = field(default_factory=list)
    #: the `progress` handed with the batch went into its transaction; False when the sink keeps
    #: no offsets, or did not store them (it rejected changes: their dead letters come first)
    progress_stored: bool = False
    #: status records not written because the sink holds a higher sequence of their key (a key
    #: that came from two partitions, two groups writing one database): counted, not silent
    stale: int = 0


@dataclass(frozen=True)
class SiteAvailability:
    """A site's availability as the top consumer judges it (connector/top/availability.py):
    `online`, `degraded` (its poller reports the site's APIs failing) or `offline` (no word from
    the site for a few heartbeat intervals), since when (the top's clock), and the state before."""

    site: str
    state: str
    since: datetime
    previous: str | None = None


class Sink(Protocol):
    """Applies batches of changes to the top layer."""

    def apply(self, changes: Sequence[Change], progress: Progress | None = None) -> ApplyResult:
        """Apply all `changes` (distinct keys) in one transaction; never regress a newer row. A
        sink that keeps offsets stores `progress` in the same transaction (`changes` may then
        be empty), unless it rejects a change; `progress_stored` says which."""
        ...

    def stored_offsets(
        self, group: str, partitions: Collection[SitePartition]
    ) -> dict[SitePartition, int] | None:
        """The next offsets stored for `group` of those of `partitions` the sink knows, or None
        when the sink keeps no offsets (Kafka's committed offsets say where reading resumes).
        Raises SinkBackpressureError when the top layer does not answer, SinkError otherwise."""
        ...

    def set_availability(self, states: Sequence[SiteAvailability]) -> None:
        """Record sites' availability changes (one per site at most), in their own call; raises
        SinkBackpressureError when the top layer is busy (the consumer tries again later)."""
        ...

    def interrupt(self) -> None:
        """The consumer is stopping: make a running (or the next) `apply` give up soon, raising
        SinkBackpressureError, so nothing is committed. Safe from a signal handler."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
