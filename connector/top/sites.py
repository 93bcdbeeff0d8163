"""Every site's queue, by topic: what the top consumer holds in memory, and the cap on it.

The loop reads each record into its site's `SiteQueue` (`queue`). Past `--max-pending-keys`
keys pending over all sites, `over_cap` marks the sites holding at least an even share of them as
held (their partitions are paused; a quiet site is read on) until pending keys fall below the cap
again. `publish` shows what they hold in the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Collection, ItemsView, Iterator

from connector.kafka.group_consumer import Partition
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.fair import FairShare
from connector.top.window import Applied, SiteQueue, Taken

#: Once over the pending-keys cap, partitions stay paused until pending keys fall this far
#: below it, so they are not paused and resumed on every poll.
RESUME_FRACTION = 0.9


class Sites:
    """The `SiteQueue` of every site topic read so far."""

    def __init__(self, topic_prefix: str) -> None:
        self._prefix = topic_prefix + "."
        self._by_topic: dict[str, SiteQueue] = {}
        self._next_publish = 0.0

    def queue(self, topic: str) -> SiteQueue:
        """The queue of `topic`, new if it is the first record read from it."""
        q = self._by_topic.get(topic)
        if q is None:
            q = self._by_topic[topic] = SiteQueue(topic.removeprefix(self._prefix))
        return q

    def __iter__(self) -> Iterator[SiteQueue]:
        return iter(self._by_topic.values())

    def __getitem__(self, topic: str) -> SiteQueue:
        return self._by_topic[topic]

    def items(self) -> ItemsView[str, SiteQueue]:
        return self._by_topic.items()

    @property
    def ready(self) -> bool:
        """A closed window has changes left to apply."""
        return any(q.closed is not None and q.closed.remaining for q in self)

    @property
    def busy(self) -> bool:
        """Something read is not committed yet."""
        return any(q.busy for q in self)

    def pending(self) -> dict[str, int]:
        """Per site, the keys pending (only sites with some)."""
        return {q.site: q.pending for q in self if q.pending}

    def take(self, fair: FairShare, room: int, applied: Applied) -> list[tuple[SiteQueue, Taken]]:
        """What one sink call of `room` changes takes: each site with changes ready in a closed
        window gets its fair share (see `SiteQueue.take`)."""
        ready = {
            topic: q.closed.remaining
            for topic, q in self.items()
            if q.closed is not None and q.closed.remaining
        }
        shares = fair.split(ready, room)
        return [(self[t], self[t].take(n, applied)) for t, n in shares.items()]

    def drop(self, partitions: Collection[Partition]) -> None:
        """Forget what was read from `partitions` (revoked or lost)."""
        gone = set(partitions)
        for q in self:
            q.drop(gone)

    def over_cap(self, cap: int) -> tuple[int, set[str]]:
        """Mark the sites to hold under `cap` pending keys; (keys pending, topics held)."""
        pending = {topic: q.pending for topic, q in self.items()}
        total = sum(pending.values())
        if total >= cap:
            share = total / len([n for n in pending.values() if n])
            for topic, n in pending.items():
                self._by_topic[topic].held |= n >= share
        elif total <= cap * RESUME_FRACTION:
            for q in self:
                q.held = False
        return total, {topic for topic, q in self.items() if q.held}

    def publish(self, metrics: ConsumerMetrics) -> None:
        """Show in `metrics`, about once a second, what each site holds pending and since when,
        and the filling windows' keys and age."""
        now = time.monotonic()
        if now < self._next_publish:
            return
        self._next_publish = now + 1.0
        wall = time.time()
        sites: dict[str, tuple[int, float | None]] = {}
        for q in self:
            oldest = q.oldest()
            sites[q.site] = (q.pending, None if oldest is None else wall - (now - oldest))
        metrics.pending.sites = sites
        metrics.window_keys.set(sum(len(q.filling.entries) for q in self))
        opened = [q.filling.opened for q in self if q.filling.opened is not None]
        metrics.window_age.set(now - min(opened) if opened else 0.0)
