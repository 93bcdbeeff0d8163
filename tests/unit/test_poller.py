"""The kind poller against a fake service proxy at the HTTP boundary: watermark and skew,
fallbacks, the revision diff, the requests really sent, paging, backoff."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import keystoneauth1.exceptions
import openstack.exceptions
import pytest
import requests
from prometheus_client import CollectorRegistry

from connector.config import SiteSettings
from connector.kafka.producer import MessageRefused
from connector.site.clock import SiteClock
from connector.site.heartbeat import Health
from connector.site.kinds import KINDS, Kind, Since, Wire
from connector.site.poller import EARLY_OVERLAP, FULL_LISTING_SHARE, IDS_PER_REQUEST, KindPoller
from connector.site.site_metrics import SiteMetrics
from connector.site.trigger import PollTrigger
from tests.support.site import FakeProducer, make_publisher, response


class FakeProxy:
    """A service proxy at the HTTP boundary: answers `get` from an in-memory collection the way
    the services do (`fields=` projection, `id=` filter, a 400 for a rejected filter), and
    records every request: path, query and microversion."""

    def __init__(self, collection: str, max_microversion: str = "3.0") -> None:
        self.collection = collection
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, dict[str, Any], str | None]] = []
        self.reject: set[str] = set()
        self.max_microversion = max_microversion
        self.default_microversion = None

    def get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        microversion: str | None = None,
    ) -> requests.Response:
        query = dict(params or {})
        self.requests.append((url, query, microversion))
        if url.endswith("/summary"):
            summary = {"total_count": len(self.objects), "total_size": 0}
            return response(200, {f"{self.collection[:-1]}-summary": summary})
        rejected = self.reject & set(query)
        if rejected:
            return response(400, {"NeutronError": {"message": f"{rejected} is invalid"}})
        ids, fields = query.get("id"), query.get("fields")
        items = [
            {k: v for k, v in obj.items() if fields is None or k in fields}
            for object_id, obj in sorted(self.objects.items())
            if ids is None or object_id in ids
        ]
        return response(200, {self.collection: items})

    def get_endpoint_data(self) -> Any:
        """What openstack.utils.supports_microversion reads off a proxy."""
        return SimpleNamespace(min_microversion="3.0", max_microversion=self.max_microversion)

    def queries(self) -> list[dict[str, Any]]:
        out = [query for _url, query, _mv in self.requests]
        self.requests.clear()
        return out


ROW = Kind(
    name="port",
    service="network",
    path="/ports",
    collection="ports",
    projected=True,
    since=Since("changed_since", may_be_rejected=True),
    revision_projection=("id", "revision_number"),
    wire=Wire(revision="revision_number"),
)
FIELDS = ROW.fields()


@pytest.fixture
def ports() -> FakeProxy:
    return FakeProxy("ports")


def put(proxy: FakeProxy, object_id: str, status: str, revision: int) -> None:
    proxy.objects[object_id] = {"id": object_id, "status": status, "revision_number": revision}


def poller(
    proxy: FakeProxy,
    clock: list[float],
    row: Kind = ROW,
    jitter: Callable[[], float] = lambda: 1.0,
    site_clock: SiteClock | None = None,
    metrics: SiteMetrics | None = None,
    health: Health | None = None,
    **settings: Any,
) -> tuple[KindPoller, FakeProducer]:
    """A poller of `row` on `proxy`, reporting into `metrics` and `health` (built on them) when
    the test reads them."""
    publisher, producer, _ = make_publisher()
    metrics = metrics or SiteMetrics(CollectorRegistry(), "s1")
    return (
        KindPoller(
            row,
            proxy,
            publisher,
            health or Health([row.name], metrics),
            metrics,
            SiteSettings(name="s1", **settings),
            clock=lambda: clock[0],
            jitter=jitter,
            site_clock=site_clock,
        ),
        producer,
    )


def sent_keys(producer: FakeProducer) -> list[tuple[str, bool]]:
    out = [(key, value is None) for key, value, _ in producer.sent]
    producer.sent.clear()
    producer.deliver()
    return out


def test_first_poll_is_a_resync_then_incremental_with_skewed_watermark(ports: FakeProxy) -> None:
    put(ports, "a", "ACTIVE", 1)
    put(ports, "b", "DOWN", 1)
    clock = [1_700_000_010.0]
    p, producer = poller(ports, clock, clock_skew=3.0)
    assert p.poll(resync=False) == "resync"
    assert ports.queries() == [{"fields": FIELDS}]
    assert sent_keys(producer) == [("s1/port/a", False), ("s1/port/b", False)]
    clock[0] += 60
    put(ports, "a", "DOWN", 2)
    assert p.poll(resync=False) == "incremental"
    watermark = datetime.fromtimestamp(1_700_000_007, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ports.queries() == [{"fields": FIELDS, "changed_since": watermark}]
    # The fake ignores the filter and lists everything: the fingerprints absorb the overlap.
    assert sent_keys(producer) == [("s1/port/a", False)]


def test_rejected_filter_falls_back_to_revision_diff_for_good(ports: FakeProxy) -> None:
    for i in range(5):
        put(ports, f"p{i}", "ACTIVE", 1)
    ports.reject = {"changed_since"}
    p, producer = poller(ports, [1_700_000_000.0])
    p.poll(resync=True)
    sent_keys(producer)
    put(ports, "p1", "DOWN", 2)
    put(ports, "p3", "ACTIVE", 2)  # a revision bump without a status change
    del ports.objects["p4"]
    ports.queries()
    assert p.poll(resync=False) == "revisions"
    queries = ports.queries()
    assert set(queries[0]) == {"fields", "changed_since"}
    assert queries[1:] == [
        {"fields": ["id", "revision_number"]},
        {"fields": FIELDS, "id": ["p1", "p3"]},
    ], "only changed revisions are fetched"
    assert sent_keys(producer) == [("s1/port/p1", False), ("s1/port/p4", True)]
    assert p.poll(resync=False) == "revisions"
    assert all("changed_since" not in q for q in ports.queries()), "not asked again"
    assert sent_keys(producer) == []


def test_revision_diff_of_most_objects_is_one_full_listing(ports: FakeProxy) -> None:
    count = 2 * IDS_PER_REQUEST
    for i in range(count):
        put(ports, f"p{i:04}", "ACTIVE", 1)
    ports.reject = {"changed_since"}
    p, producer = poller(ports, [1_700_000_000.0])
    p.poll(resync=True)
    p.poll(resync=False)
    sent_keys(producer)
    ports.queries()
    flapped = int(count * FULL_LISTING_SHARE) + IDS_PER_REQUEST
    for i in range(flapped):
        put(ports, f"p{i:04}", "DOWN", 2)
    assert p.poll(resync=False) == "revisions"
    assert ports.queries() == [{"fields": ["id", "revision_number"]}, {"fields": FIELDS}]
    assert len(sent_keys(producer)) == flapped


def test_revision_diff_resends_a_change_whose_delivery_failed(ports: FakeProxy) -> None:
    put(ports, "a", "ACTIVE", 1)
    ports.reject = {"changed_since"}
    p, producer = poller(ports, [1_700_000_000.0])
    p.poll(resync=True)
    producer.sent.clear()
    producer.deliver(error="broker down")
    p.poll(resync=False)
    assert sent_keys(producer) == [("s1/port/a", False)]


def test_resync_turns_vanished_objects_into_tombstones(ports: FakeProxy) -> None:
    put(ports, "a", "ACTIVE", 1)
    put(ports, "b", "ACTIVE", 1)
    p, producer = poller(ports, [1_700_000_000.0])
    p.poll(resync=True)
    sent_keys(producer)
    del ports.objects["b"]
    p.poll(resync=True)
    assert sent_keys(producer) == [("s1/port/b", True)]


def test_a_site_error_is_openstacksdks_exception(ports: FakeProxy) -> None:
    ports.reject = {"fields"}
    p, _ = poller(ports, [1_700_000_000.0])
    with pytest.raises(openstack.exceptions.BadRequestException) as raised:
        p.poll(resync=True)
    assert "is invalid" in str(raised.value.details)


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half(ports: FakeProxy) -> None:
    p, _ = poller(ports, [0.0], backoff_initial=1.0, backoff_max=10.0)
    assert [p.backoff(n) for n in (1, 2, 3, 4, 5, 60)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    low, _ = poller(ports, [0.0], backoff_initial=1.0, backoff_max=10.0, jitter=lambda: 0.0)
    assert low.backoff(3) == 2.0


@pytest.mark.parametrize(
    ("site_max", "mode", "sent"),
    [
        ("3.59", "resync", [(None, {"all_tenants": "True"})]),
        (
            "3.70",
            "incremental",
            [
                ("3.60", {"all_tenants": "True", "updated_at": "gte:2023-11-14T22:13:17Z"}),
                ("3.60", {"all_tenants": "True", "created_at": "gte:2023-11-14T22:13:17Z"}),
            ],
        ),
    ],
)
def test_cinder_filters_only_from_microversion_3_60(
    site_max: str, mode: str, sent: list[tuple[str | None, dict[str, Any]]]
) -> None:
    volumes = FakeProxy("volumes", max_microversion=site_max)
    volumes.objects["v1"] = {
        "id": "v1",
        "status": "available",
        "attachments": [],
        "os-vol-host-attr:host": None,
    }
    p, _ = poller(volumes, [1_700_000_000.0], row=KINDS["volume"])
    p.poll(resync=True)
    assert volumes.requests == [("/volumes/detail", {"all_tenants": "True"}, None)]
    assert p.poll(resync=False) == mode
    detail = [r for r in volumes.requests if r[0] == "/volumes/detail"][1:]
    assert [(microversion, query) for _url, query, microversion in detail] == sent


class FlakyFullListings(FakeProxy):
    """Full listings (no changed_since) answer 500 while `failing`; incremental ones work."""

    failing = False

    def get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        microversion: str | None = None,
    ) -> requests.Response:
        if self.failing and "changed_since" not in (params or {}):
            self.requests.append((url, dict(params or {}), None))
            return response(500, {"message": "full listing timed out"})
        return super().get(url, params, headers, microversion)


def run_for(p: KindPoller, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the poller's loop on a thread until `condition` holds (or fail after `timeout`)."""
    stop = threading.Event()
    runner = threading.Thread(target=p.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.01)
    finally:
        stop.set()
        runner.join(5)


def test_a_phase_puts_the_polls_after_the_first_off_once(ports: FakeProxy) -> None:
    put(ports, "a", "ACTIVE", 1)
    p, _ = poller(ports, [1_700_000_000.0], interval=0.1)
    stop = threading.Event()
    runner = threading.Thread(target=p.run, args=(stop,), kwargs={"phase": 1.0})
    runner.start()
    try:
        wait_until = time.monotonic() + 0.8
        while time.monotonic() < wait_until:
            time.sleep(0.05)
        first = ports.queries()
        assert first and all("changed_since" not in q for q in first), "only the first resync"
        time.sleep(0.8)  # past the phase: interval polls every 0.1 s from then on
        assert sum("changed_since" in q for q in ports.queries()) >= 3
    finally:
        stop.set()
        runner.join(5)


def test_incremental_polls_go_on_while_a_due_resync_fails() -> None:
    proxy = FlakyFullListings("ports")
    put(proxy, "a", "ACTIVE", 1)
    p, producer = poller(
        proxy,
        [1_700_000_000.0],
        interval=0.01,
        resync_interval=0.01,
        backoff_initial=0.01,
        backoff_max=0.02,
    )
    p.poll(resync=True)
    sent_keys(producer)
    proxy.failing = True
    put(proxy, "a", "DOWN", 2)
    run_for(p, lambda: bool(producer.sent))
    assert producer.sent[0][0] == "s1/port/a"
    asked = proxy.queries()
    assert any("changed_since" not in q for q in asked), "the due resync was not tried"
    assert any("changed_since" in q for q in asked)


def test_a_failed_delivery_makes_the_next_poll_a_resync(ports: FakeProxy) -> None:
    put(ports, "a", "ACTIVE", 1)
    p, producer = poller(ports, [1_700_000_000.0])
    p.poll(resync=True)
    assert not p.wants_resync(due=False, last_resync_failed=False)
    producer.sent.clear()
    producer.deliver(error="broker down")
    # An incremental listing would not show "a" again (it did not change): only a resync does.
    assert p.wants_resync(due=False, last_resync_failed=False)
    # ... unless the last resync failed: then one incremental poll goes first.
    assert not p.wants_resync(due=True, last_resync_failed=True)


def test_a_deleted_volume_is_found_by_the_summary_count_then_an_id_sweep() -> None:
    volumes = FakeProxy("volumes", max_microversion="3.70")
    for name in ("v1", "v2", "v3"):
        volumes.objects[name] = {
            "id": name,
            "status": "available",
            "attachments": [],
            "os-vol-host-attr:host": None,
        }
    p, producer = poller(volumes, [1_700_000_000.0], row=KINDS["volume"])
    p.poll(resync=True)
    sent_keys(producer)
    volumes.requests.clear()
    assert p.poll(resync=False) == "incremental"
    summary = ("/volumes/summary", {"all_tenants": "True"}, "3.12")
    assert summary in volumes.requests, "the count is asked on every incremental poll"
    assert all(url != "/volumes" for url, _q, _mv in volumes.requests), "counts match: no sweep"
    assert sent_keys(producer) == []

    del volumes.objects["v2"]
    volumes.requests.clear()
    assert p.poll(resync=False) == "incremental"
    assert ("/volumes", {"all_tenants": "True"}, None) in volumes.requests, "the id sweep"
    assert sent_keys(producer) == [("s1/volume/v2", True)]


def test_neutron_objects_are_swept_every_few_polls_where_changed_since_works() -> None:
    row = KINDS["port"]
    proxy = FakeProxy("ports")
    for name in ("a", "b"):
        put(proxy, name, "ACTIVE", 1)
    p, producer = poller(proxy, [1_700_000_000.0], row=row, deletion_sweep_every=2)
    p.poll(resync=True)
    sent_keys(producer)
    del proxy.objects["b"]
    proxy.requests.clear()
    assert p.poll(resync=False) == "incremental"
    assert sent_keys(producer) == [], "no sweep on the first incremental poll"
    assert p.poll(resync=False) == "incremental"
    assert ("/ports", {"limit": "10000", "fields": ["id"]}, None) in proxy.requests
    assert sent_keys(producer) == [("s1/port/b", True)]


def test_unreadable_objects_are_skipped_counted_logged_once_and_degrade(
    ports: FakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a", "b", "c", "d"):
        put(ports, name, "ACTIVE", 1)
    metrics = SiteMetrics(CollectorRegistry(), "s1")
    health = Health(["port"], metrics)
    p, producer = poller(ports, [1_700_000_000.0], metrics=metrics, health=health)
    p.poll(resync=True)
    sent_keys(producer)
    ports.objects["b"]["updated_at"] = "yesterday-ish"
    ports.objects["c"]["status"] = ["ACTIVE"]
    ports.objects["x"] = {"name": "no id", "status": "ACTIVE", "revision_number": 1}
    put(ports, "e", "DOWN", 1)
    for _ in range(2):
        assert p.poll(resync=True) == "resync"
    assert sent_keys(producer) == [("s1/port/e", False)], "b and c keep their records"
    registry = metrics.registry
    labels = {"site": "s1", "kind": "port"}
    value = registry.get_sample_value("cascade_site_unparseable_objects_total", labels)
    assert value == 6, "three objects, two listings"
    skipped = [r for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(skipped) == 3, "logged once per object"
    healthy, details = health.snapshot()
    assert not healthy and details["port.unparseable"] == 3

    ports.objects["b"]["updated_at"] = "2026-01-01T00:00:00Z"
    ports.objects["c"]["status"] = "ACTIVE"
    del ports.objects["x"]
    p.poll(resync=True)
    assert health.snapshot()[0] and health.snapshot()[1]["port.unparseable"] == 0


def test_a_mass_vanish_is_held_back_until_the_next_listing_agrees(ports: FakeProxy) -> None:
    for n in range(100):
        put(ports, f"p{n:03d}", "ACTIVE", 1)
    metrics = SiteMetrics(CollectorRegistry(), "s1")
    health = Health(["port"], metrics)
    p, producer = poller(ports, [1_700_000_000.0], vanish_guard=0.2, metrics=metrics, health=health)
    p.poll(resync=True)
    sent_keys(producer)
    hidden = {f"p{n:03d}": ports.objects.pop(f"p{n:03d}") for n in range(30)}
    p.poll(resync=True)
    assert sent_keys(producer) == [], "30% vanished at once: held back"
    healthy, details = health.snapshot()
    assert not healthy and details["port.held_back"] == 30
    ports.objects.update(hidden)
    p.poll(resync=True)
    assert sent_keys(producer) == [] and health.snapshot()[0], "they came back: nothing lost"

    for n in range(30):
        del ports.objects[f"p{n:03d}"]
    p.poll(resync=True)
    assert sent_keys(producer) == []
    p.poll(resync=True)
    assert len(sent_keys(producer)) == 30, "the next listing agreed: tombstones"
    assert health.snapshot()[0]
    del ports.objects["p099"]
    p.poll(resync=True)
    assert sent_keys(producer) == [("s1/port/p099", True)], "a few deletions are not held"


def test_the_watermark_is_on_the_sites_clock(ports: FakeProxy) -> None:
    put(ports, "a", "ACTIVE", 1)
    local = 1_700_000_010.0
    site_clock = SiteClock(local=lambda: local)
    ahead = email.utils.formatdate(local + 60, usegmt=True)
    site_clock.observe(ahead)
    p, _producer = poller(ports, [local], site_clock=site_clock, clock_skew=3.0)
    p.poll(resync=True)
    ports.queries()
    p.poll(resync=False)
    # The site's clock read 60 s ahead (+0.5 s for the header's rounding); minus the skew.
    watermark = datetime.fromtimestamp(local + 60.5 - 3.0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ports.queries() == [{"fields": FIELDS, "changed_since": watermark}]


def test_the_proxy_is_made_in_the_first_poll_and_a_failure_is_a_site_fault(
    ports: FakeProxy,
) -> None:
    put(ports, "a", "ACTIVE", 1)
    attempts: list[int] = []

    def connect() -> FakeProxy:
        attempts.append(1)
        if len(attempts) == 1:
            raise keystoneauth1.exceptions.ConnectFailure("Keystone is down")
        return ports

    publisher, producer, _ = make_publisher()
    metrics = SiteMetrics(CollectorRegistry(), "s1")
    health = Health([ROW.name], metrics)
    p = KindPoller(
        ROW,
        None,
        publisher,
        health,
        metrics,
        SiteSettings(name="s1", backoff_initial=0.01),
        connect=connect,
    )
    assert not p.run_once(threading.Event(), attempts=1)
    assert not health.snapshot()[0]
    assert p.run_once(threading.Event(), attempts=1)
    assert [key for key, _v, _cb in producer.sent] == ["s1/port/a"]


def test_an_early_poll_reaches_back_little_and_the_next_interval_poll_as_if_it_had_not_run(
    ports: FakeProxy,
) -> None:
    put(ports, "a", "ACTIVE", 1)
    local = [1_700_000_010.0]
    site_clock = SiteClock(local=lambda: local[0])
    p, _producer = poller(ports, local, site_clock=site_clock, clock_skew=3.0)

    def since() -> float:
        """The listing's changed-since filter (whole seconds) as epoch seconds."""
        (query,) = ports.queries()
        return datetime.strptime(query["changed_since"], "%Y-%m-%dT%H:%M:%S%z").timestamp()

    # No answer measured the site's clock here: uncertain by the header's half second.
    reach = EARLY_OVERLAP + site_clock.uncertainty
    assert reach == 0.75
    p.poll(resync=True)  # at ...010
    ports.queries()
    local[0] += 10
    p.poll(resync=False, early=True)  # at ...020
    assert since() == 1_700_000_009, "back from the resync's start by 0.75 s, not by 3 s"
    local[0] += 2
    p.poll(resync=False, early=True)  # at ...022
    assert since() == 1_700_000_019, "back from the early poll before it"
    local[0] += 5
    p.poll(resync=False)  # at ...027
    assert since() == 1_700_000_007, "the interval poll: from the resync, minus the clock skew"
    local[0] += 5
    p.poll(resync=False)  # at ...032
    assert since() == 1_700_000_024


class PagedProxy(FakeProxy):
    """`FakeProxy` answering `page` objects at a time with Neutron's next link (the marker in
    the link), one second of `clock` passing per request."""

    def __init__(self, collection: str, page: int, clock: list[float]) -> None:
        super().__init__(collection)
        self.page = page
        self.clock = clock
        #: (marker, changed_since) of every request, in order
        self.asked: list[tuple[str | None, str | None]] = []

    def get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        microversion: str | None = None,
    ) -> requests.Response:
        parts = urlsplit(url)
        query: dict[str, Any] = {**(params or {}), **dict(parse_qsl(parts.query))}
        marker = query.pop("marker", None)
        self.asked.append((marker, query.get("changed_since")))
        self.clock[0] += 1
        ids = sorted(self.objects)
        start = ids.index(marker) + 1 if marker else 0
        chunk = ids[start : start + self.page]
        body: dict[str, Any] = {self.collection: [self.objects[i] for i in chunk]}
        if start + self.page < len(ids):
            following = urlencode({**query, "marker": chunk[-1]}, doseq=True)
            body[f"{self.collection}_links"] = [{"rel": "next", "href": f"/ports?{following}"}]
        return response(200, body)


def test_an_early_poll_goes_between_an_interval_polls_pages_and_reaches_back_to_its_start() -> None:
    """An interval poll lists most of a busy site; a notified change must not wait for it. The
    early poll runs between two of its pages, from just before the interval poll began (not
    from the last early poll, long before), and the next early poll from the early one."""
    local = [1_700_000_010.0]
    ports = PagedProxy("ports", page=2, clock=local)
    for object_id in "abcde":
        put(ports, object_id, "ACTIVE", 1)
    site_clock = SiteClock(local=lambda: local[0])
    p, producer = poller(ports, local, site_clock=site_clock, clock_skew=3.0)
    p.trigger = PollTrigger(debounce=0.0, interval=30.0, storm_share=0.5)
    p.poll(resync=True)  # at ...010; three pages
    assert sent_keys(producer) == [(f"s1/port/{i}", False) for i in "abcde"]
    ports.asked.clear()

    local[0] = 1_700_000_020.0
    p.trigger.fire()
    p.poll(resync=False)  # the interval poll: its first page, then the early poll, then the rest
    interval, early = "2023-11-14T22:13:27Z", "2023-11-14T22:13:39Z"  # ...007 and ...019
    assert ports.asked == [
        (None, interval),
        (None, early),
        ("b", early),
        ("d", early),
        ("b", interval),
        ("d", interval),
    ]
    ports.asked.clear()
    local[0] = 1_700_000_030.0
    p.trigger.fire()
    assert p.trigger.wait(threading.Event(), 1.0) is True
    p.poll(resync=False, early=True)
    # From the early poll's start (...021: one request into the interval poll), less 0.75 s.
    assert ports.asked[0] == (None, "2023-11-14T22:13:40Z")


def test_a_resync_lets_no_early_poll_between_its_pages() -> None:
    """A resync turns what it did not list into tombstones: an early poll between its pages
    could publish an object its pages already passed, then the resync would delete it."""
    local = [1_700_000_010.0]
    ports = PagedProxy("ports", page=2, clock=local)
    for object_id in "abcde":
        put(ports, object_id, "ACTIVE", 1)
    p, _producer = poller(ports, local)
    p.trigger = PollTrigger(debounce=0.0, interval=30.0, storm_share=0.5)
    p.trigger.fire()
    p.poll(resync=True)
    assert ports.asked == [(None, None), ("b", None), ("d", None)]
    assert p.trigger.take_due() is True, "the early poll is still due after the resync"


def test_an_early_poll_listing_most_of_its_kind_changed_at_once_pauses_the_triggers(
    ports: FakeProxy,
) -> None:
    """The storm check reads how long the site took for what an early poll listed from the
    update times: 200 objects stamped within one second is a restart; the same 200 spread over
    ten seconds is churn, however long the poll took."""
    storms: list[float] = []
    local = [1_700_000_010.0]
    p, _producer = poller(ports, local)
    p.trigger = PollTrigger(0.0, 30.0, 0.3, on_storm=lambda: storms.append(local[0]))

    def change_all(stamps: Callable[[int], int]) -> None:
        for i in range(200):
            stamp = datetime.fromtimestamp(1_700_000_000 + stamps(i), UTC)
            ports.objects[f"p{i:03}"] = {
                "id": f"p{i:03}",
                "status": "DOWN"
                if ports.objects.get(f"p{i:03}", {}).get("status") == "ACTIVE"
                else "ACTIVE",
                "revision_number": 1,
                "updated_at": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }

    change_all(lambda i: 0)
    p.poll(resync=True)
    change_all(lambda i: i // 20)  # ten seconds of churn
    p.poll(resync=False, early=True)
    assert storms == []
    change_all(lambda i: 30)  # all within one second
    p.poll(resync=False, early=True)
    assert storms == [local[0]]


class RefusingProducer(FakeProducer):
    """As librdkafka: a message larger than `message.max.bytes` is refused when produced."""

    def produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        on_delivery: Callable[..., None],
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        if value is not None and len(value) > 1_000_000:
            raise MessageRefused(f"{topic}: Broker: Message size too large")
        super().produce(topic, key, value, on_delivery, headers)


HOSTILE_ROW = replace(ROW, details={"load": "load", "owner": "device_owner"})

#: id -> fields of objects no poll may stop on (the field is what is wrong)
HOSTILE: dict[str, dict[str, Any]] = {
    "rev-70-bits": {"revision_number": 2**70},
    "rev-inf": {"revision_number": float("inf")},
    "rev-text": {"revision_number": "twelve"},
    "load-nan": {"load": float("nan")},
    "load-inf": {"load": float("-inf")},
    "load-70-bits": {"load": -(2**70)},
    "year-1": {"updated_at": "0001-01-01T00:00:00+01:00"},
    "year-9999": {"updated_at": "9999-12-31T23:59:59-01:00"},
    "surrogate-name": {"name": "vm-\ud800"},
    "surrogate-detail": {"device_owner": ["ok", "\udfff"]},
    "x\udc80": {},
    "i" * 300: {},
    "status-number": {"status": 5},
    "huge-name": {"name": "n" * 2_000_000},
}


def test_no_hostile_object_stops_the_poll_each_is_skipped_counted_logged_once_and_shown(
    ports: FakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(40):
        put(ports, f"good-{n}", "ACTIVE", 1)
    for object_id, fields in HOSTILE.items():
        put(ports, object_id, "ACTIVE", 1)
        ports.objects[object_id].update(fields)
    registry = CollectorRegistry()
    metrics = SiteMetrics(registry, "s1")
    producer = RefusingProducer()
    publisher, _, health = make_publisher(metrics=metrics, kinds=["port"], producer=producer)
    p = KindPoller(HOSTILE_ROW, ports, publisher, health, metrics, SiteSettings(name="s1"))
    for _ in range(2):
        assert p.poll(resync=True) == "resync"
    ports.reject = {"changed_since"}  # on to the revision listing, and listings by id
    assert p.poll(resync=False) == "revisions"
    published = {key for key, _value, _ in producer.sent}
    assert published == {f"s1/port/good-{n}" for n in range(40)}, "every good object, only them"
    skipped = registry.get_sample_value(
        "cascade_site_unparseable_objects_total", {"site": "s1", "kind": "port"}
    )
    assert skipped == 3 * len(HOSTILE), "each hostile object, at each listing"
    logged = [r for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(logged) == len(HOSTILE), "logged once per object"
    status, details = health.heartbeat()
    assert status == "degraded" and details["port.unparseable"] == len(HOSTILE)
    publisher.heartbeat(status, details)  # the heartbeat itself encodes
    assert producer.sent[-1][0] == "s1/site/s1"
