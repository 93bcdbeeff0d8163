"""The kind poller against a fake listing: watermark and skew, fallbacks, revision diff, backoff."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, ClassVar

import openstack.exceptions
import pytest
from prometheus_client import CollectorRegistry

from connector.config import SiteSettings
from connector.site.heartbeat import Health
from connector.site.kinds import Kind, Port, Since, Volume
from connector.site.metrics import SiteMetrics
from connector.site.poller import KindPoller
from tests.unit.test_site_publisher import FakeProducer, make


class FakePorts(Port):
    """A Neutron port listing over an in-memory site; records every query it was given."""

    site: ClassVar[dict[str, tuple[str, int]]] = {}
    queries: ClassVar[list[dict[str, Any]]] = []
    reject_since: ClassVar[bool] = False

    @classmethod
    def list(
        cls,
        session: Any,
        paginated: bool = True,
        base_path: str | None = None,
        allow_unknown_params: bool = False,
        **params: Any,
    ) -> Iterator[Any]:  # type: ignore[override]
        params.pop("microversion", None)
        cls.queries.append(params)
        if "changed_since" in params and cls.reject_since:
            raise openstack.exceptions.BadRequestException("Unknown filter: changed_since")
        ids = params.get("id")
        for object_id, (status, revision) in sorted(cls.site.items()):
            if ids is None or object_id in ids:
                yield Port.existing(id=object_id, status=status, revision_number=revision)


ROW = Kind(
    name="port",
    service="network",
    resource=FakePorts,
    since=Since("changed_since", may_be_rejected=True),
    revision_projection=("id", "revision_number"),
)


@pytest.fixture
def site() -> Iterator[dict[str, tuple[str, int]]]:
    FakePorts.site, FakePorts.queries, FakePorts.reject_since = {}, [], False
    yield FakePorts.site


def poller(clock: list[float], **settings: Any) -> tuple[KindPoller, FakeProducer]:
    publisher, producer, _ = make()
    metrics = SiteMetrics(CollectorRegistry(), "s1")
    return (
        KindPoller(
            ROW,
            object(),
            publisher,
            Health(["port"], metrics),
            metrics,
            SiteSettings(name="s1", **settings),
            clock=lambda: clock[0],
            jitter=lambda: 1.0,
        ),
        producer,
    )


def sent_keys(producer: FakeProducer) -> list[tuple[str, bool]]:
    out = [(key, value is None) for key, value, _ in producer.sent]
    producer.sent.clear()
    producer.deliver()
    return out


def test_first_poll_is_a_resync_then_incremental_with_skewed_watermark(site: dict) -> None:
    site.update({"a": ("ACTIVE", 1), "b": ("DOWN", 1)})
    clock = [1_700_000_010.0]
    p, producer = poller(clock, clock_skew=3.0)
    assert p.poll(resync=False) == "resync"
    assert sent_keys(producer) == [("s1/port/a", False), ("s1/port/b", False)]
    clock[0] += 60
    site["a"] = ("DOWN", 2)
    assert p.poll(resync=False) == "incremental"
    watermark = datetime.fromtimestamp(1_700_000_007, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert FakePorts.queries[-1] == {"changed_since": watermark}
    # The fake ignores the filter and lists everything: the fingerprints absorb the overlap.
    assert sent_keys(producer) == [("s1/port/a", False)]


def test_rejected_filter_falls_back_to_revision_diff_for_good(site: dict) -> None:
    site.update({f"p{i}": ("ACTIVE", 1) for i in range(5)})
    FakePorts.reject_since = True
    clock = [1_700_000_000.0]
    p, producer = poller(clock)
    p.poll(resync=True)
    sent_keys(producer)
    site["p1"] = ("DOWN", 2)
    site["p3"] = ("ACTIVE", 2)  # a revision bump without a status change
    del site["p4"]
    FakePorts.queries.clear()
    assert p.poll(resync=False) == "revisions"
    assert FakePorts.queries[0] == {"changed_since": FakePorts.queries[0]["changed_since"]}
    assert FakePorts.queries[1] == {"fields": ["id", "revision_number"]}
    assert FakePorts.queries[2] == {"id": ["p1", "p3"]}, "only changed revisions are fetched"
    assert sent_keys(producer) == [("s1/port/p1", False), ("s1/port/p4", True)]
    FakePorts.queries.clear()
    assert p.poll(resync=False) == "revisions"
    assert all("changed_since" not in q for q in FakePorts.queries), "not asked again"
    assert sent_keys(producer) == []


def test_revision_diff_resends_a_change_whose_delivery_failed(site: dict) -> None:
    site.update({"a": ("ACTIVE", 1)})
    FakePorts.reject_since = True
    p, producer = poller([1_700_000_000.0])
    p.poll(resync=True)
    producer.sent.clear()
    producer.deliver(error="broker down")
    p.poll(resync=False)
    assert sent_keys(producer) == [("s1/port/a", False)]


def test_resync_turns_vanished_objects_into_tombstones(site: dict) -> None:
    site.update({"a": ("ACTIVE", 1), "b": ("ACTIVE", 1)})
    p, producer = poller([1_700_000_000.0])
    p.poll(resync=True)
    sent_keys(producer)
    del site["b"]
    p.poll(resync=True)
    assert sent_keys(producer) == [("s1/port/b", True)]


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    p, _ = poller([0.0], backoff_initial=1.0, backoff_max=10.0)
    assert [p.backoff(n) for n in (1, 2, 3, 4, 5, 60)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    p._jitter = lambda: 0.0
    assert p.backoff(3) == 2.0


class FakeVolumes(Volume):
    """A Cinder volume listing that records the microversion and query of every call."""

    calls: ClassVar[list[tuple[str | None, dict[str, Any]]]] = []

    @classmethod
    def list(  # type: ignore[override]
        cls, session: Any, base_path: str | None = None, microversion: str | None = None, **q: Any
    ) -> Iterator[Any]:
        cls.calls.append((microversion, q))
        yield Volume.existing(id="v1", status="available", attachments=[])


class FakeBlockStorage:
    """What openstack.utils.supports_microversion reads off a service proxy."""

    default_microversion = None

    def __init__(self, max_microversion: str) -> None:
        self.max_microversion = max_microversion

    def get_endpoint_data(self) -> Any:
        return SimpleNamespace(min_microversion="3.0", max_microversion=self.max_microversion)


@pytest.mark.parametrize(
    ("site_max", "mode", "sent"),
    [
        ("3.59", "resync", (None, {})),
        ("3.70", "incremental", ("3.60", {"updated_at": "gte:2023-11-14T22:13:17Z"})),
    ],
)
def test_cinder_filter_only_from_microversion_3_60(
    site_max: str, mode: str, sent: tuple[str | None, dict[str, Any]]
) -> None:
    FakeVolumes.calls = []
    row = Kind(
        name="volume",
        service="block_storage",
        resource=FakeVolumes,
        since=Since("updated_at", template="gte:{}", min_microversion="3.60"),
    )
    publisher, _, _ = make()
    metrics = SiteMetrics(CollectorRegistry(), "s1")
    clock = [1_700_000_000.0]
    poller = KindPoller(
        row,
        FakeBlockStorage(site_max),
        publisher,
        Health(["volume"], metrics),
        metrics,
        SiteSettings(name="s1"),
        clock=lambda: clock[0],
    )
    poller.poll(resync=True)
    assert FakeVolumes.calls == [(None, {})]
    assert poller.poll(resync=False) == mode
    assert FakeVolumes.calls[-1] == sent
