"""Every site the top consumer reads, by topic: what it holds in memory, the cap on that, and
each site's availability.

The loop reads each record into its site's `SiteQueue` (`queue`, `put`). Past
`--max-pending-keys` keys pending over all sites, `over_cap` marks the sites holding at least an
even share of them as held (their partitions are paused; a quiet site is read on) until pending
keys fall below the cap again. A site's own heartbeats tell how often it polls (which the
window-closing policy uses) and feed its `Availability`, which `judge` updates on every turn of
the loop and hands to the sink. A sink call's changes are taken (`take`) and settled (`settle`)
here; a closed window applied in full (`finished`) is forgotten once its offsets are committed
(`done`). `publish` shows what the sites hold in the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, ItemsView, Iterator, Mapping

from connector.kafka.group_consumer import Partition
from connector.records.model import StatusRecord
from connector.sinks.base import Sink, SinkBackpressureError
from connector.top.availability import Availability
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.fair import FairShare
from connector.top.window import Applied, Closed, Pending, SiteQueue, Taken

log = logging.getLogger(__name__)

#: Once over the pending-keys cap, partitions stay paused until pending keys fall this far
#: below it, so they are not paused and resumed on every poll.
RESUME_FRACTION = 0.9

#: Seconds before handing availability changes again to a sink that refused them (busy).
AVAILABILITY_RETRY_SECONDS = 5.0


class Sites:
    """The `SiteQueue` of every site topic read so far, and the sites' `availability`."""

    def __init__(
        self, topic_prefix: str, availability: Availability, metrics: ConsumerMetrics
    ) -> None:
        self._prefix = topic_prefix + "."
        self._availability = availability
        self._metrics = metrics
        self._by_topic: dict[str, SiteQueue] = {}
        self._over_cap = False
        self._availability_retry = 0.0
        self._next_publish = 0.0

    def queue(self, topic: str) -> SiteQueue:
        """The queue of `topic`, new if it is the first record read from it."""
        q = self._by_topic.get(topic)
        if q is None:
            q = self._by_topic[topic] = SiteQueue(topic.removeprefix(self._prefix))
        return q

    def put(self, q: SiteQueue, entry: Pending, applied: int | None) -> None:
        """Put `entry`, just read from `q`'s topic, in its filling window (see `Window.put`;
        `applied`: the fingerprint the top layer holds of its key). A heartbeat of the site
        tells how often it polls and how it fares."""
        change = entry.change
        if isinstance(change, StatusRecord) and change.is_heartbeat:
            interval = change.details.get("poll.interval")
            if isinstance(interval, int | float) and interval > 0:
                q.poll_interval = float(interval)
            if change.site == q.site:
                beat = change.details.get("heartbeat.interval")
                every = float(beat) if isinstance(beat, int | float) else None
                self._availability.heartbeat(
                    q.site, entry.partition, change.status, every, entry.since
                )
        q.filling.put(entry, applied)

    def judge(self, sink: Sink, waited: float) -> None:
        """Update the sites' availability (`waited`: seconds the last poll waited for records),
        and hand its changes to `sink` in calls of their own (a busy sink: tried again after
        AVAILABILITY_RETRY_SECONDS)."""
        now = time.monotonic()
        self._availability.tick(now, waited, paused=[q.site for q in self if q.held])
        states = self._availability.unwritten()
        if not states or now < self._availability_retry:
            return
        try:
            sink.set_availability(states)
        except SinkBackpressureError as exc:
            log.warning("sink refused site availability for now (%s)", exc)
            self._availability_retry = now + AVAILABILITY_RETRY_SECONDS
            return
        self._availability.written(states)

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
        window gets its fair share (see `SiteQueue.take`). Distinct keys, as the sink requires:
        a window holds one entry per key, and the decoder lets into a site's window only keys
        of that site, so no two sites share one."""
        ready = {
            topic: q.closed.remaining
            for topic, q in self.items()
            if q.closed is not None and q.closed.remaining
        }
        shares = fair.split(ready, room)
        return [(self[t], self[t].take(n, applied)) for t, n in shares.items()]

    def settle(self, taken: list[tuple[SiteQueue, Taken]], refused: Mapping[str, str]) -> None:
        """Settle what a call took (see `SiteQueue.settle`); the sink `refused` key -> why."""
        for q, part in taken:
            q.settle(part, refused)
            self._metrics.coalesced.inc(len(part.replaced))
            self._metrics.skipped.inc(part.skipped)

    def finished(self, now: float) -> Iterator[tuple[SiteQueue, Closed]]:
        """The closed windows applied in full, of the sites not waiting to try their dead
        letters or offsets again (`SiteQueue.retry_due`)."""
        for q in self:
            if q.closed is not None and not q.closed.remaining and now >= q.retry_due:
                yield q, q.closed

    def done(self, q: SiteQueue) -> None:
        """`q`'s closed window is applied and its offsets committed: count its records, and
        forget it."""
        assert q.closed is not None
        if q.closed.window.record_count:
            self._metrics.records.labels(q.site).inc(q.closed.window.record_count)
        q.closed = None

    def drop(
        self, partitions: Collection[Partition], still_assigned: Collection[Partition]
    ) -> None:
        """Forget what was read from `partitions` (revoked or lost), and their sites'
        availability; a site none of whose partitions is `still_assigned` leaves the heartbeat
        metrics (its next owner reports them; an age kept here would only grow)."""
        gone = set(partitions)
        for q in self:
            q.drop(gone)
        self._availability.forget(gone)
        held = {topic for topic, _p in still_assigned}
        for topic in {topic for topic, _p in gone} - held:
            self._metrics.heartbeats.forget(topic.removeprefix(self._prefix))

    def over_cap(self, cap: int) -> tuple[int, set[str] | None]:
        """Mark the sites to hold under `cap` pending keys; (keys pending, the topics to hold
        now, None when none is held nor was at the last look)."""
        pending = {topic: q.pending for topic, q in self.items()}
        total = sum(pending.values())
        if total >= cap:
            share = total / len([n for n in pending.values() if n])
            for topic, n in pending.items():
                self._by_topic[topic].held |= n >= share
        elif total <= cap * RESUME_FRACTION:
            for q in self:
                q.held = False
        held = {topic for topic, q in self.items() if q.held}
        was_over, self._over_cap = self._over_cap, bool(held)
        return total, held if held or was_over else None

    def publish(self) -> None:
        """Show in the metrics, about once a second, what each site holds pending and since when,
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
        metrics = self._metrics
        metrics.pending.sites = sites
        metrics.window_keys.set(sum(len(q.filling.entries) for q in self))
        opened = [q.filling.opened for q in self if q.filling.opened is not None]
        metrics.window_age.set(now - min(opened) if opened else 0.0)
