"""What the top side calls of its group consumer.

`GroupConsumer` is the protocol the loop, its offsets (`offsets.Offsets`) and its window-closing
policy (`closing.WindowCloser`) are written against; `connector.kafka.group_consumer.Consumer`
is the one used in production, and tests/support/fake_group.py fakes it so the loop's rules
have unit tests with no broker.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from connector.kafka import Message
from connector.kafka.group_consumer import AssignCallback, Partition, PartitionsCallback


class GroupConsumer(Protocol):
    """A subscribed consumer group member, naming partitions as (topic, partition) pairs."""

    def subscribe(
        self,
        pattern: str,
        on_assign: AssignCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None: ...

    def consume(self, max_messages: int, timeout: float) -> list[Message]: ...

    def commit(self, offsets: Mapping[Partition, int]) -> None: ...

    def committed(
        self, partitions: Collection[Partition], timeout: float = ...
    ) -> dict[Partition, int]: ...

    def positions(self, partitions: Collection[Partition]) -> dict[Partition, int]: ...

    def watermarks(
        self, topic: str, partition: int, cached: bool = ..., timeout: float = ...
    ) -> tuple[int, int]: ...

    def first_offset_since(
        self, topic: str, partition: int, timestamp_ms: int, timeout: float = ...
    ) -> int: ...

    def delete_retention(
        self, topics: Collection[str], timeout: float = ...
    ) -> dict[str, float]: ...

    def stable_ends(
        self, partitions: Collection[Partition], timeout: float = ...
    ) -> dict[Partition, int]: ...

    def partitions_matching(self, pattern: str) -> list[Partition]: ...

    def unserved(self, pattern: str, timeout: float = ...) -> list[Partition]: ...

    def rejoin(self) -> None: ...

    def hold(self, partitions: Collection[Partition]) -> None: ...

    def trigger_backpressure(
        self, seek_to: Mapping[Partition, int], resume_after: float
    ) -> None: ...

    @property
    def paused(self) -> frozenset[Partition]: ...

    def close(self) -> None: ...
