"""Site availability at the top: `online`, `degraded` or `offline`, with hysteresis.

The top consumer tells "the site's APIs are down" from "no word from the site":

- `degraded`: the site's poller is alive and reports trouble (its heartbeat's status is
  `degraded`: an API failing, objects it cannot read, Kafka errors). Its objects keep their
  statuses: the poller still publishes what it can read.
- `offline`: no heartbeat read from the site for `offline_after` of its heartbeat intervals, by
  the top's own clock (the poller is stopped, or its link or Kafka path is down). One lost
  heartbeat is not enough (StarlingX marks a subcloud offline after two failed audits, not one).
- `online`: back after `online_after` consecutive good heartbeats, so a site that flaps between
  answering and not does not flap its objects' statuses with it.

The member that reads a site's heartbeats (they all share one key, so one partition) judges it;
a member that loses that partition forgets the site, and its next owner judges it from the
first heartbeat it reads. Silence is measured only while the loop reads: time the loop spent
blocked (a slow sink call) does not count against any site, and neither does the time a site's
partitions are paused because pending keys reached the cap. Each change of state is logged,
counted, exported per state, and handed to the sink (`Sink.set_availability`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from connector.kafka.group_consumer import Partition
from connector.sinks.base import SiteAvailability

log = logging.getLogger(__name__)

ONLINE, DEGRADED, OFFLINE = "online", "degraded", "offline"
STATES = (ONLINE, DEGRADED, OFFLINE)

#: A site's heartbeat interval when its heartbeat does not say (the poller's default).
DEFAULT_HEARTBEAT_INTERVAL = 5.0

#: Seconds of a loop turn spent neither waiting for records nor blind: taking what was read.
BLIND_AFTER = 1.0


@dataclass(frozen=True)
class AvailabilityPolicy:
    """When a site turns offline and when it is back.

    3 intervals offline: one heartbeat lost, or late on a loaded machine, leaves a margin of a
    whole interval; 15 s with the default 5 s heartbeat, as `CascadeSiteStale` judges. 2 good
    heartbeats back: one good heartbeat amid failures is not recovery, and 2 keep the return
    within 10 s, one default poll interval."""

    offline_after: int = 3  #: heartbeat intervals without a heartbeat
    online_after: int = 2  #: consecutive good heartbeats to come back online


class AvailabilityMetrics:
    """The availability gauges and counter, registered on an injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "cascade_site_availability",
            "1 for the site's availability state as this top consumer judges it, 0 for the others.",
            ["site", "state"],
            registry=registry,
        )
        self.transitions = Counter(
            "cascade_site_availability_transitions",
            "Changes of a site's availability state, by the state entered.",
            ["site", "state"],
            registry=registry,
        )


@dataclass
class _Site:
    state: str
    since: datetime
    partition: Partition  #: where its heartbeats come from
    heard: float  #: monotonic time of the last heartbeat read (shifted past blind time)
    interval: float
    good: int = 0  #: consecutive good heartbeats while not online


class Availability:
    """Judges every site whose heartbeats this member reads; see the module docstring."""

    def __init__(
        self,
        policy: AvailabilityPolicy,
        metrics: AvailabilityMetrics,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._policy = policy
        self._metrics = metrics
        self._wall = wall
        self._sites: dict[str, _Site] = {}
        self._unwritten: dict[str, SiteAvailability] = {}
        self._last_tick: float | None = None

    def sites(self) -> list[str]:
        """The sites this member judges (it reads their heartbeats); safe from another thread."""
        return list(self._sites)

    def state(self, site: str) -> str | None:
        known = self._sites.get(site)
        return None if known is None else known.state

    def heartbeat(
        self,
        site: str,
        partition: Partition,
        status: str | None,
        interval: float | None,
        now: float,
    ) -> None:
        """A heartbeat of `site` was read (from `partition`) at monotonic time `now`."""
        interval = interval if interval and interval > 0 else DEFAULT_HEARTBEAT_INTERVAL
        healthy = status != DEGRADED
        known = self._sites.get(site)
        if known is None:
            # First word since this member holds the partition: nothing to be hysteretic about.
            state = ONLINE if healthy else DEGRADED
            self._sites[site] = _Site(state, self._wall(), partition, now, interval)
            self._enter(site, state, None)
            return
        known.heard, known.interval, known.partition = now, interval, partition
        if not healthy:
            known.good = 0
            if known.state != DEGRADED:
                self._move(site, known, DEGRADED)
        elif known.state != ONLINE:
            known.good += 1
            if known.good >= self._policy.online_after:
                self._move(site, known, ONLINE)

    def tick(self, now: float, waited: float, paused: Iterable[str] = ()) -> None:
        """Turn sites without a heartbeat for `offline_after` intervals offline. `waited`: of
        the time since the last tick, the seconds the loop spent waiting for records; the rest,
        past BLIND_AFTER, the loop was busy elsewhere (a slow sink call) and is not silence.
        Sites in `paused` (their partitions held by the consumer) are not judged: nothing of
        theirs is read."""
        since = 0.0 if self._last_tick is None else now - self._last_tick
        blind = max(0.0, since - waited - BLIND_AFTER)
        self._last_tick = now
        held = set(paused)
        for site, known in self._sites.items():
            if blind or site in held:
                known.heard = now if site in held else known.heard + blind
            silent = now - known.heard
            if known.state != OFFLINE and silent > self._policy.offline_after * known.interval:
                self._move(site, known, OFFLINE, f"no heartbeat for {silent:.1f} s")

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions revoked or lost: their sites are judged by their next owner."""
        gone = set(partitions)
        for site in [s for s, known in self._sites.items() if known.partition in gone]:
            del self._sites[site]
            for state in STATES:
                self._metrics.state.remove(site, state)

    def unwritten(self) -> list[SiteAvailability]:
        """The latest state change of each site not yet handed to the sink."""
        return list(self._unwritten.values())

    def written(self, states: Iterable[SiteAvailability]) -> None:
        for state in states:
            if self._unwritten.get(state.site) == state:
                del self._unwritten[state.site]

    def _move(self, site: str, known: _Site, state: str, why: str = "") -> None:
        previous = known.state
        known.state, known.since, known.good = state, self._wall(), 0
        log.warning("site %s is %s (was %s)%s", site, state, previous, f": {why}" if why else "")
        self._enter(site, state, previous)

    def _enter(self, site: str, state: str, previous: str | None) -> None:
        for name in STATES:
            self._metrics.state.labels(site, name).set(1 if name == state else 0)
        self._metrics.transitions.labels(site, state).inc()
        self._unwritten[site] = SiteAvailability(site, state, self._sites[site].since, previous)
