"""Polling one kind of one site: incremental polls, full resyncs, retries with backoff.

A `KindPoller` drives one row of the kinds table against one service proxy and hands every
observation to the publisher, which decides what is a change. Incremental polls use the row's
"changed since" filter where the site honours it (checked: microversion, or a 400 that says the
site rejects the key), else a listing of ids and revisions diffed against the last one, else a
full listing. The watermark is the start of the last good poll minus the clock-skew tolerance;
the overlap this causes is absorbed by the fingerprints. A resync lists everything and turns
vanished objects into tombstones.

An early poll (a notification said the kind changed: connector.site.trigger) reaches back only
EARLY_OVERLAP, plus what the site's clock is still uncertain by, before the previous poll began:
at a thousand changes a second the clock-skew overlap made each early poll list three seconds
of changes again, most of a site, and so slow that changes waited for it. What an early poll
may miss (a change the site showed late) costs freshness only: the next interval poll reaches
back to the interval poll before it, minus the full clock skew, as if no early poll had run,
and interval polls stay due every interval however many early polls ran between them.

An interval poll at a busy site lists most of it, which takes seconds; with a trigger, it takes
its pages one at a time and lets a due early poll run between two of them, so notified changes
do not wait for it. The early poll's pages are asked for after the interval poll's pages
published so far and before its next one, so no key is ever published in an older state after
a newer one. It reaches back from when the interval poll began at the earliest: whatever
changed before that, the interval poll's pages list.

Deleted objects that the incremental filter cannot show (Cinder and Neutron do not list them)
are found by a sweep of ids: on every incremental poll where the service has a cheap count that
no longer matches (Cinder's volume summary), else every `deletion_sweep_every` polls. A listed
object that cannot be read (no id, a bad time), or whose record cannot be encoded or produced (a
64-bit overflow, a lone surrogate, too large), is skipped, counted and reported, never fatal.
A listing that would tombstone more than `vanish_guard` of the kind's objects at once (a Nova
cell down) is held back until the next one agrees.

Site faults (timeouts, 5xx, refused connections, auth failures) fail one poll of one kind; the
loop retries it with exponential backoff and jitter while the other kinds go on in their own
threads. The service proxy is made inside the poll, so a site down at start-up is such a fault.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import keystoneauth1.exceptions
import openstack.exceptions
import openstack.utils

from connector.config import SiteSettings
from connector.kafka.producer import ProduceInterrupted
from connector.site.backoff import backoff_delay
from connector.site.clock import SiteClock
from connector.site.heartbeat import Health
from connector.site.kinds import Kind, Observation, Since, Unreadable
from connector.site.publisher import Publisher
from connector.site.site_metrics import SiteMetrics
from connector.site.trigger import PollTrigger

log = logging.getLogger(__name__)

#: What a failing site raises through openstacksdk: HTTP errors (SDKException and its
#: HttpException family) and transport errors (keystoneauth's ClientException family:
#: connection refused, timeouts, discovery and auth failures).
SITE_FAULTS: tuple[type[Exception], ...] = (
    openstack.exceptions.SDKException,
    keystoneauth1.exceptions.ClientException,
)

#: Seconds an early poll reaches back before the previous poll began, beyond the uncertainty of
#: the site's clock (see the module's docstring).
EARLY_OVERLAP = 0.25
#: Ids per request when listing changed objects by id (keeps URLs well under 8 KiB).
IDS_PER_REQUEST = 100
#: When more than this share of the objects changed (a site restart), one full listing costs
#: the site less than listing them `IDS_PER_REQUEST` at a time.
FULL_LISTING_SHARE = 0.25
#: The mass vanish guard holds back no fewer than this many tombstones: on a small site a few
#: deletions are a large share without meaning anything.
VANISH_GUARD_FLOOR = 10


class EarlyListing:
    """What an early poll listed: how many objects, and over how long the site changed them."""

    def __init__(self) -> None:
        self.count = 0
        self._oldest: datetime | None = None
        self._newest: datetime | None = None

    def add(self, updated: datetime | None) -> None:
        self.count += 1
        if updated is not None:
            if self._oldest is None or updated < self._oldest:
                self._oldest = updated
            if self._newest is None or updated > self._newest:
                self._newest = updated

    @property
    def span(self) -> float:
        """Seconds from the oldest change listed to the newest (0 when unknown)."""
        if self._oldest is None or self._newest is None:
            return 0.0
        return (self._newest - self._oldest).total_seconds()


class KindPoller:
    """Polls one kind of one site and publishes what changed."""

    def __init__(
        self,
        kind: Kind,
        proxy: Any,
        publisher: Publisher,
        health: Health,
        metrics: SiteMetrics,
        settings: SiteSettings,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        connect: Callable[[], Any] | None = None,
        site_clock: SiteClock | None = None,
    ) -> None:
        """`proxy` is the service proxy, or None to make it with `connect()` in the first poll
        (then a site down at start-up is a failed poll, retried, not a failed start)."""
        self.kind = kind
        self._proxy = proxy
        self._connect = connect
        #: the site's clock offset (from the Date headers of its answers), for the watermark
        self._site_clock = site_clock or SiteClock()
        self._publisher = publisher
        self._health = health
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._jitter = jitter
        #: start (epoch seconds, the site's clock) of the last good poll; None until the first
        #: resync
        self._watermark: float | None = None
        #: the same, of the last good poll that was not an early one
        self._full_watermark: float | None = None
        #: the site answered 400 to the row's `since` filter: use the fallback from now on
        self._since_rejected = False
        #: id -> revision_number from the last listing, for the revision diff
        self._revisions: dict[str, int] = {}
        #: objects listed but unreadable: id (or a description when the id is missing) -> why
        self._unreadable: dict[str, str] = {}
        #: the same keys, once logged: each is logged once for as long as it stays unreadable
        self._logged: set[str] = set()
        #: incremental polls since the last sweep of ids
        self._since_sweep = 0
        #: tombstones the mass vanish guard held back at the last listing
        self._held: set[str] = set()
        #: ends the wait between polls early, and lets early polls go between the pages of an
        #: interval poll (connector.site.trigger); None: polling alone
        self.trigger: PollTrigger | None = None
        #: objects an early poll listed, and the oldest and newest time the site stamped them
        #: with (for the trigger's storm check); None outside early polls
        self._early_listing: EarlyListing | None = None
        #: an early poll ran between the pages of the poll under way (and moved the watermark)
        self._early_between = False
        #: the last listing showed the poller's own projects only (`_judge_view`)
        self._unprivileged = False

    def __repr__(self) -> str:
        return (
            f"KindPoller({self.kind.name}, watermark={self._watermark}, "
            f"since_rejected={self._since_rejected}, revisions={len(self._revisions)})"
        )

    @property
    def proxy(self) -> Any:
        """The service proxy this poller lists through (its session carries the request hooks),
        once the first poll made it (None before)."""
        return self._proxy

    # -- one poll ---------------------------------------------------------------------------

    def poll(self, resync: bool, early: bool = False) -> str:
        """One poll (a resync when asked or before the first one; `early`: one a notification
        asked for); returns the mode used. Raises one of SITE_FAULTS when the site fails."""
        if self._proxy is None:
            assert self._connect is not None, "a KindPoller needs a proxy or a connect()"
            self._proxy = self._connect()
        started = self._clock()
        begun = time.monotonic()
        self._early_between = False
        if resync or self._watermark is None or self._full_watermark is None:
            mode, early = "resync", False
            self._resync()
        elif early:
            mode = self._early(self._watermark)
        else:
            mode = self._incremental(
                self._full_watermark - self._settings.clock_skew,
                interval_start=started + self._site_clock.offset,
            )
        self._observe_duration(mode, begun)
        # The watermark is the start on the site's clock: its timestamps are what it is compared
        # with. The offset is read after the poll, whose answers measured it. (Health and
        # metrics keep our clock.)
        watermark = started + self._site_clock.offset
        if not self._early_between:  # else the last early poll's start, which came later
            self._watermark = watermark
        if not early:
            self._full_watermark = watermark
        self._listed_until(watermark)
        self._health.poll_ok(
            self.kind.name,
            datetime.fromtimestamp(started, UTC),
            self._publisher.count(self.kind.name),
        )
        return mode

    def _observe_duration(self, mode: str, begun: float) -> None:
        self._metrics.poll_seconds.labels(self._metrics.site, self.kind.name, mode).observe(
            time.monotonic() - begun
        )

    def _early(self, watermark: float) -> str:
        """An early poll from just before `watermark` (see the module's docstring); what it
        listed goes to the trigger, which pauses early polls on a storm."""
        reach = EARLY_OVERLAP + self._site_clock.uncertainty
        self._early_listing = listing = EarlyListing()
        try:
            mode = self._incremental(watermark - reach, sweep=False)
        finally:
            self._early_listing = None
        if self.trigger is not None:
            self.trigger.ended(listing.count, listing.span, self._publisher.count(self.kind.name))
        return mode

    def _early_between_pages(self, interval_start: float) -> None:
        """Between two pages of the interval poll that began at `interval_start` (the site's
        clock): the early poll a notification asked for, if it is due; it reaches back no
        further than that start (see the module's docstring)."""
        if self.trigger is None or not self.trigger.take_due():
            return
        started = self._clock()
        begun = time.monotonic()
        assert self._watermark is not None
        mode = self._early(max(self._watermark, interval_start))
        self._observe_duration(mode, begun)
        self._watermark = started + self._site_clock.offset
        self._early_between = True
        self._listed_until(self._watermark)

    def _listed_until(self, began: float) -> None:
        """Tell the trigger that a poll which began at `began` (the site's clock) listed every
        change made before it, less what an early poll's overlap allows for (a change the site
        showed late), so that notifications about those trigger no poll."""
        if self.trigger is not None:
            self.trigger.listed_until(began - EARLY_OVERLAP - self._site_clock.uncertainty)

    def _incremental(
        self, since_epoch: float, sweep: bool = True, interval_start: float | None = None
    ) -> str:
        """An incremental listing from `since_epoch`; then, if `sweep`, a look for deletions
        the listing cannot show (early polls leave that to the interval polls: a sweep is a
        listing of every id, which at an early poll a second would double the requests).
        `interval_start`: this is the interval poll that began then, and a due early poll may
        run between two of its pages (with a trigger)."""
        since = self.kind.since
        if since is not None and not self._since_rejected and self._honoured(since):
            at = datetime.fromtimestamp(since_epoch, UTC)
            paced = interval_start if self.trigger is not None else None
            try:
                for filter_ in (since, self.kind.created):
                    if filter_ is None:
                        continue
                    for page in self.kind.observation_pages(
                        self._proxy,
                        {filter_.param: filter_.value(at)},
                        filter_.min_microversion,
                        self._skip,
                        prefetch=paced is None,
                    ):
                        self._publish(page)
                        if paced is not None:
                            self._early_between_pages(paced)
            except openstack.exceptions.BadRequestException as exc:
                if not since.may_be_rejected:
                    raise
                log.warning(
                    "%s: the site rejects %s (%s); diffing listings from now on",
                    self.kind.name,
                    since.param,
                    exc,
                )
                self._since_rejected = True
            else:
                # Outside the `try`: a 400 from the sweep is not the site rejecting `since`.
                if sweep:
                    self._sweep_deletions()
                return "incremental"
        if self.kind.revision_projection:
            self._revision_diff()
            return "revisions"
        self._resync()
        return "resync"

    def _honoured(self, since: Since) -> bool:
        return self._supports(since.min_microversion)

    def _supports(self, microversion: str | None) -> bool:
        if microversion is None:
            return True
        return bool(openstack.utils.supports_microversion(self._proxy, microversion))

    def _skip(self, bad: Unreadable) -> None:
        """A listed object that cannot be read: counted every time, logged once per object."""
        key = bad.object_id or bad.reason
        self._metrics.unparseable.labels(self._metrics.site, self.kind.name).inc()
        if key not in self._logged:
            self._logged.add(key)
            log.warning("%s: skipping an object the poller cannot read: %s", self.kind.name, bad)
        self._unreadable[key] = bad.reason
        self._health.set_unparseable(self.kind.name, len(self._unreadable))

    def _unreadable_ids(self) -> set[str]:
        """Ids of objects that are listed but unreadable: they exist, so no tombstone."""
        return set(self._unreadable) & self._publisher.known_ids(self.kind.name)

    def _publish(self, observations: Iterable[Observation]) -> set[str]:
        """Publish every listed object; returns the ids of those that exist."""
        seen: set[str] = set()
        count = 0
        unprivileged = False
        for obs in observations:
            count += 1
            try:
                self._publisher.observe(self.kind.name, obs)
            except Unreadable as exc:  # cannot be encoded or produced: as if unreadable
                self._skip(exc)
                continue
            if self._unreadable.pop(obs.id, None) is not None or obs.id in self._logged:
                self._logged.discard(obs.id)
                log.info("%s %s: readable again", self.kind.name, obs.id)
                self._health.set_unparseable(self.kind.name, len(self._unreadable))
            if obs.deleted:
                self._revisions.pop(obs.id, None)
            else:
                seen.add(obs.id)
                if obs.revision is not None:
                    self._revisions[obs.id] = obs.revision
            if self._early_listing is not None:
                self._early_listing.add(obs.source_updated_at)
            unprivileged = unprivileged or obs.unprivileged
        self._metrics.objects_seen.labels(self._metrics.site, self.kind.name).inc(count)
        if count:
            self._judge_view(unprivileged)
        return seen

    def _judge_view(self, unprivileged: bool) -> None:
        """Whether the last listing showed the whole site: a listing without the field only
        admins see means the service dropped `all_tenants` and shows the poller's own projects
        only. Logged when it starts and ends; degraded (heartbeat, /readyz) while it lasts."""
        if unprivileged == self._unprivileged:
            return
        self._unprivileged = unprivileged
        if unprivileged:
            log.error(
                "%s: the site lists only the projects of the poller's own credentials (%s "
                "missing from the objects listed: no admin role?); objects of other projects "
                "are not published",
                self.kind.name,
                self.kind.admin_field,
            )
        else:
            log.info("%s: the site lists every project again", self.kind.name)
        self._health.set_unprivileged(self.kind.name, unprivileged)

    def _resync(self) -> None:
        self._revisions = {}
        # A full listing says which objects are unreadable now; earlier ones may be mended.
        self._unreadable = {}
        seen = self._publish(self.kind.observations(self._proxy, skip=self._skip))
        self._logged &= set(self._unreadable)
        self._health.set_unparseable(self.kind.name, len(self._unreadable))
        self._tombstone_vanished(seen)

    def _sweep_deletions(self) -> None:
        """After an incremental listing that does not show deletions: find them by a listing
        of ids, when the service's count says some are missing, or on schedule."""
        sweep = self.kind.sweep
        if sweep is None:
            return
        self._since_sweep += 1
        reason = None
        if sweep.count is not None and self._supports(sweep.count.min_microversion):
            known = self._publisher.known_ids(self.kind.name) | set(self._unreadable)
            if self.kind.total(self._proxy) != len(known):
                reason = "count"
        elif self._since_sweep >= self._settings.deletion_sweep_every:
            reason = "schedule"
        if reason is None:
            return
        self._since_sweep = 0
        self._metrics.deletion_sweeps.labels(self._metrics.site, self.kind.name, reason).inc()
        listed = self.kind.listed_ids(self._proxy, skip=self._skip)
        # Objects created since the incremental listing are in `listed` and not known yet: the
        # next incremental poll publishes them. Only known ids that are gone matter here.
        self._tombstone_vanished(listed)

    def _revision_diff(self) -> None:
        listed = self.kind.revisions(self._proxy, skip=self._skip)
        self._metrics.objects_seen.labels(self._metrics.site, self.kind.name).inc(len(listed))
        dirty = self._publisher.dirty_ids(self.kind.name)
        changed = [
            object_id
            for object_id, revision in listed.items()
            if revision is None or self._revisions.get(object_id) != revision or object_id in dirty
        ]
        if len(changed) > max(IDS_PER_REQUEST, FULL_LISTING_SHARE * len(listed)):
            self._resync()
            return
        unchanged = len(listed) - len(changed)
        self._metrics.unchanged.labels(self._metrics.site, self.kind.name).inc(unchanged)
        for start in range(0, len(changed), IDS_PER_REQUEST):
            chunk = changed[start : start + IDS_PER_REQUEST]
            self._publish(self.kind.observations(self._proxy, {"id": chunk}, skip=self._skip))
        self._tombstone_vanished(set(listed))

    def _tombstone_vanished(self, present: set[str]) -> None:
        """Tombstones for known objects the listing did not show, unless too many vanished at
        once: those wait until the next listing agrees (the mass vanish guard)."""
        known = self._publisher.known_ids(self.kind.name)
        vanished = known - present - self._unreadable_ids()
        # Held back last time and still gone: confirmed. The rest is judged on its own.
        confirmed = vanished & self._held
        fresh = vanished - confirmed
        limit = max(VANISH_GUARD_FLOOR, self._settings.vanish_guard * len(known))
        held = fresh if len(fresh) > limit else set()
        if held:
            log.warning(
                "%s: %d of %d objects vanished from one listing (more than %.0f%%); holding their "
                "tombstones back until the next listing agrees",
                self.kind.name,
                len(held),
                len(known),
                100 * self._settings.vanish_guard,
            )
        elif self._held - vanished:
            log.info(
                "%s: %d held-back object(s) are listed again; no tombstones for them",
                self.kind.name,
                len(self._held - vanished),
            )
        self._held = held
        self._metrics.held_back.labels(self._metrics.site, self.kind.name).set(len(held))
        self._health.set_held_back(self.kind.name, len(held))
        for object_id in vanished - held:
            self._publisher.delete(self.kind.name, object_id)
            self._revisions.pop(object_id, None)

    # -- loops ------------------------------------------------------------------------------

    def run(self, stop: threading.Event, phase: float = 0.0) -> None:
        """Poll until `stop` is set: incremental every interval, a resync every resync interval
        (and first), early polls when the trigger says so (a notification), retries with backoff
        when the site fails. `phase`: seconds the interval polls and resyncs after the first
        poll are put off, once (the runner spreads the kinds' polls over the interval, so that
        a busy site's long listings do not fall together)."""
        next_resync = time.monotonic()
        resync_failed = False
        early = False
        #: when the last poll that was not an early one began
        last_full = next_resync
        while not stop.is_set():
            begun = time.monotonic()
            resync = self.wants_resync(begun >= next_resync, resync_failed)
            ok = self._attempt(resync, stop, early)
            resync_failed = resync and not ok
            if not ok:
                continue
            if resync:
                next_resync = begun + self._settings.resync_interval + phase
            if resync or not early:
                last_full = begun + phase
                phase = 0.0
            due = max(0.0, self._settings.interval - (time.monotonic() - last_full))
            if self.trigger is not None:
                early = self.trigger.wait(stop, due)
            else:
                stop.wait(due)

    def wants_resync(self, due: bool, last_resync_failed: bool) -> bool:
        """Whether the next poll is a resync: when one is due, or when keys whose delivery failed
        wait to be sent again (an incremental listing would not show them: they did not change).
        A resync that failed is retried, but every other attempt is incremental, so changes keep
        flowing while a full listing is out of reach."""
        wanted = due or bool(self._publisher.dirty_ids(self.kind.name))
        return wanted and not (last_resync_failed and self._watermark is not None)

    def run_once(self, stop: threading.Event, attempts: int) -> bool:
        """One resync, retried with backoff up to `attempts` times; True if it succeeded."""
        for _ in range(attempts):
            if stop.is_set():
                return False
            if self._attempt(True, stop):
                return True
        return False

    def _attempt(self, resync: bool, stop: threading.Event, early: bool = False) -> bool:
        """One poll; on a site fault, record it and wait the backoff delay. True on success.
        False without a wait when the producer was interrupted (the process is stopping)."""
        try:
            self.poll(resync, early)
            return True
        except ProduceInterrupted:
            stop.set()
            return False
        except SITE_FAULTS as exc:
            failures = self._health.poll_failed(self.kind.name, _describe(exc))
            delay = self.backoff(failures)
            log.warning(
                "%s: poll failed (%d in a row), retrying in %.1fs: %s",
                self.kind.name,
                failures,
                delay,
                _describe(exc),
            )
            stop.wait(delay)
            return False

    def backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (see `backoff_delay`)."""
        return backoff_delay(self._settings, failures, self._jitter())


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."
