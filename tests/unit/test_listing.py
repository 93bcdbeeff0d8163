"""Listing pages through a service proxy: next links, the query sent once, loops, bad bodies,
and the prefetching thread (order, errors, an early close)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import openstack.exceptions
import pytest
import requests

from connector.site.listing import pages, prefetched
from tests.support.site import response


class PagedProxy:
    """Answers each `get` with the next canned body, recording url and params."""

    def __init__(self, bodies: list[tuple[int, dict[str, Any]]]) -> None:
        self.bodies = list(bodies)
        self.requests: list[tuple[str, Any]] = []

    def get(self, url: str, params: Any = None, **_kwargs: Any) -> requests.Response:
        self.requests.append((url, params))
        status, body = self.bodies.pop(0)
        return response(status, body)


NEXT = "http://site.test/compute/v2.1/servers/detail?all_tenants=True&limit=2&marker=b"


def test_pages_follow_next_links_with_the_query_sent_once() -> None:
    proxy = PagedProxy(
        [
            (
                200,
                {
                    "servers": [{"id": "a"}, {"id": "b"}],
                    "servers_links": [{"rel": "next", "href": NEXT}],
                },
            ),
            (200, {"servers": [{"id": "c"}]}),
        ]
    )
    got = list(pages(proxy, "/servers/detail", "servers", {"all_tenants": "True"}))
    assert got == [[{"id": "a"}, {"id": "b"}], [{"id": "c"}]]
    # The next link carries the filters and the marker: nothing is added to it.
    assert proxy.requests == [("/servers/detail", {"all_tenants": "True"}), (NEXT, None)]


def test_an_empty_page_ends_the_listing_and_a_loop_is_an_error() -> None:
    link = {"servers_links": [{"rel": "next", "href": NEXT}]}
    proxy = PagedProxy([(200, {"servers": [], **link})])
    assert list(pages(proxy, "/servers/detail", "servers", {})) == [[]]
    proxy = PagedProxy([(200, {"servers": [{"id": "a"}], **link})] * 3)
    with pytest.raises(openstack.exceptions.SDKException, match="endless pagination"):
        list(pages(proxy, "/servers/detail", "servers", {}))


def test_errors_and_bodies_without_the_collection_are_sdk_exceptions() -> None:
    proxy = PagedProxy([(503, {"computeFault": {"message": "down"}})])
    with pytest.raises(openstack.exceptions.HttpException) as raised:
        list(pages(proxy, "/servers/detail", "servers", {}))
    assert raised.value.status_code == 503
    proxy = PagedProxy([(200, {"volumes": []})])
    with pytest.raises(openstack.exceptions.SDKException, match="no 'servers' list"):
        list(pages(proxy, "/servers/detail", "servers", {}))


def test_prefetched_keeps_order_and_raises_where_the_source_raised() -> None:
    def source() -> Iterator[int]:
        yield from range(5)
        raise openstack.exceptions.SDKException("site gone")

    got: list[int] = []
    with pytest.raises(openstack.exceptions.SDKException, match="site gone"):
        for item in prefetched(source(), "test"):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_closing_prefetched_early_stops_its_thread() -> None:
    finished = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            finished.set()

    items = prefetched(endless(), "test-close")
    assert next(items) == 0
    items.close()
    assert finished.wait(10), "the fetching thread did not stop"
