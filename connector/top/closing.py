"""When a site's filling window closes: the window-closing policy, beside the windows.

A window closes once the window before it is applied, it is `--batch-wait` old, its partitions
are read to their ends, and the changes it absorbed could have been applied by now at the rate
limit (or it is `--max-window-wait` old): while a site storms faster than the top layer takes
changes, its window keeps absorbing, so the slower the top layer the stronger the collapse.
`WindowPolicy` holds the figures (and how windows go out, and how much may wait in memory);
`WindowCloser` applies them, asking the group consumer where reading stands.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from connector.errors import KafkaError
from connector.kafka.group_consumer import Partition
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.group import GroupConsumer
from connector.top.window import Applied, SiteQueue

#: How long the broker's answer to "what is this partition's last stable offset?" is trusted,
#: and how long asking waits. A poller publishing steadily always has a transaction open, so a
#: busy site's partitions look behind at every window's close; asking only after they had
#: looked so for a second held each of its windows that second longer.
STABLE_END_SECONDS = 0.25
STABLE_END_TIMEOUT = 1.0

#: A storming site's window closes once no object changed for this many of its poll intervals:
#: the storm is over as far as its polls can tell (one interval could fall between two polls).
QUIET_POLLS = 2


@dataclass(frozen=True)
class WindowPolicy:
    """When a window closes, how it goes out (and when what failed is tried again), and how
    much may wait in memory."""

    call_size: int  #: changes per sink call at most (the rate limit may allow fewer)
    wait: float  #: seconds a window stays open at least, once it has a record
    max_wait: float  #: seconds a window stays open at most while its site storms
    max_pending_keys: int  #: keys waiting over all sites before reading is paused
    #: kinds applied first within a site's share, in this order (heartbeats always go first)
    kind_priority: tuple[str, ...] = ()
    #: a site's share of each call relative to the others (default 1)
    site_weights: Mapping[str, float] = field(default_factory=dict)
    #: seconds before reading again what needed an unanswering schema registry, and before
    #: retrying dead letters that could not be delivered
    retry_after: float = 5.0


class WindowCloser:
    """Closes the filling windows that are due under `policy` at the rate limit `max_rate`."""

    def __init__(
        self,
        consumer: GroupConsumer,
        policy: WindowPolicy,
        max_rate: float | None,
        metrics: ConsumerMetrics,
    ) -> None:
        self._consumer = consumer
        self._policy = policy
        self._max_rate = max_rate
        self._metrics = metrics
        self._priority = {kind: i for i, kind in enumerate(policy.kind_priority)}
        #: partition -> (monotonic time asked, last stable offset), see `_stable_ends`
        self._stable_ends_at: dict[Partition, tuple[float, int]] = {}

    def next_close(self, queues: Iterable[SiteQueue], now: float, at_most: float) -> float:
        """Seconds until the first filling window of a site with no window being applied may
        close (negative: overdue), `at_most` at most."""
        times = [at_most]
        for q in queues:
            at = self._closes_at(q)
            if q.closed is None and at is not None:
                times.append(at - now)
        return min(times)

    def close_windows(self, queues: Iterable[SiteQueue], applied: Applied, now: float) -> None:
        """Close every filling window that is due; it drops what `applied` says the top layer
        holds, and goes out heartbeats first, then by kind priority."""
        due = []
        for q in queues:
            at = self._closes_at(q)
            if q.closed is None and at is not None and at <= now:
                due.append(q)
        # A backlog is read to its end before its window closes, so it collapses whole (memory
        # stays within --max-pending-keys).
        waiting = [q for q in due if self._may_wait(q, now)]
        self._fix_ends(waiting, now)
        behind = {id(q) for q in waiting if self._behind(q)}
        for q in due:
            if id(q) in behind:
                continue
            merged = q.filling.merged
            closed = q.close(applied, self._priority)
            self._metrics.windows.inc()
            self._metrics.skipped.inc(closed.skipped)
            self._metrics.coalesced.inc(merged)

    def forget(self, partitions: Collection[Partition]) -> None:
        """`partitions` are no longer this member's."""
        for tp in partitions:
            self._stable_ends_at.pop(tp, None)

    def _closes_at(self, q: SiteQueue) -> float | None:
        """When `q`'s filling window may close: `wait` after its first record; but while its
        site changes faster than the rate limit (churn over the time the site took for it),
        not before the top layer could have taken that churn, up to `max_wait`. Waiting that
        long at most doubles the delay pushing every change would have caused, and a burst
        shorter than that costs one write per key that really changed. Once the site's polls
        saw no change for QUIET_POLLS intervals (known from its heartbeats), the storm is over
        and holding on would only delay its last states."""
        window = q.filling
        if window.opened is None:
            return None
        hold = self._policy.wait
        rate = self._max_rate
        if rate is not None and not q.held:
            needed = window.churn / rate
            if needed > window.span:
                hold = max(hold, min(self._policy.max_wait, needed))
                if q.poll_interval is not None and window.last_churn is not None:
                    quiet = window.last_churn + QUIET_POLLS * q.poll_interval - window.opened
                    hold = max(self._policy.wait, min(hold, quiet))
        return window.opened + hold

    def _may_wait(self, q: SiteQueue, now: float) -> bool:
        """A due window may wait for its partitions to be read to their ends: not once it is
        `max_wait` old, nor while its site is held over the pending-keys cap."""
        opened = q.filling.opened
        return opened is not None and now - opened < self._policy.max_wait and not q.held

    def _reached(self, q: SiteQueue) -> dict[Partition, int]:
        """Where reading stands in each partition of `q`'s window: where it will read next, not
        the last record + 1 (a transaction's commit marker takes an offset too)."""
        window = q.filling
        positions = self._consumer.positions(window.last.keys())
        return {tp: max(last + 1, positions.get(tp, -1)) for tp, last in window.last.items()}

    def _fix_ends(self, queues: list[SiteQueue], now: float) -> None:
        """Fix, for each window of `queues` that has none yet, the ends its partitions must be
        read to before it closes: up to the last stable offset, not the high watermark of the
        last fetch, which counts the records of a transaction still open (a paused poller's,
        say): waiting for those held a window for up to `max_wait`. The end is fixed when the
        window is first due: a site that publishes all the time (transactions committed five
        times a second) always has a record more, and chasing it held windows for seconds.
        Only partitions whose last fetch saw more than was read are asked about, all in one
        request: a round trip per partition made a turn of the loop of a consumer of many
        sites slow (docs/performance.md)."""
        unfixed = [(q, self._reached(q)) for q in queues if q.filling.read_to is None]
        behind = [
            tp
            for _q, reached in unfixed
            for tp, read in reached.items()
            if self._consumer.watermarks(*tp, cached=True)[1] > read
        ]
        ends = self._stable_ends(behind, now)
        for q, reached in unfixed:
            q.filling.read_to = {tp: ends.get(tp, read) for tp, read in reached.items()}

    def _behind(self, q: SiteQueue) -> bool:
        """True while records that were in Kafka when `q`'s window became due to close (its
        `read_to`, see `_fix_ends`) are not read yet, for a partition of the window."""
        read_to = q.filling.read_to or {}
        return any(read_to.get(tp, -1) > read for tp, read in self._reached(q).items())

    def _stable_ends(self, partitions: list[Partition], now: float) -> dict[Partition, int]:
        """The partitions' last stable offsets, each asked of the broker at most every
        STABLE_END_SECONDS (asking on every look slowed a consumer of 20 sites several times
        over); -1 (nothing to wait for) when the broker does not answer soon."""
        known = self._stable_ends_at
        ask = [
            tp for tp in partitions if tp not in known or now - known[tp][0] >= STABLE_END_SECONDS
        ]
        if ask:
            try:
                found = self._consumer.stable_ends(ask, timeout=STABLE_END_TIMEOUT)
            except KafkaError:
                found = {}
            for tp in ask:
                known[tp] = (now, found.get(tp, -1))
        return {tp: known[tp][1] for tp in partitions}
