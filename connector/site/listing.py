"""Listing pages through an openstacksdk service proxy, as plain JSON.

openstacksdk keeps what it is good at: auth and token renewal, endpoint discovery, microversion
headers, sessions, retries (the proxy is a keystoneauth Adapter, `proxy.get(path, params=...,
microversion=...)`). What it is slow at, building a `Resource` per listed object (even for a
resource with ten fields; docs/performance.md), is skipped: pages are parsed straight from the
response body, and the kinds table turns each object into an `Observation`.

Paging follows the services: a `<collection>_links` (or `links`, `next`) next link, absolute,
with the query carried in it (Nova, Cinder, Neutron with `limit`). Errors are raised the way
openstacksdk raises them (`openstack.exceptions.raise_from_response`), so callers see the same
`SDKException` family as through `Resource.list`.

`prefetched` overlaps the wait for the next page with the work on the current one: the site
renders page N+1 while the poller fingerprints and encodes page N.

A page is foreign input: an integer longer than Python converts (`sys.get_int_max_str_digits`,
4,300 digits) made the whole page fail to parse, every poll; it parses as a `HugeInteger`, which
makes only the object holding it unreadable.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Generator, Iterator, Mapping
from typing import Any, TypeVar, cast

import openstack.exceptions

T = TypeVar("T")

#: One query value: a string, or a list for a key repeated (`fields=id&fields=status`).
QueryValue = str | list[str]


class HugeInteger:
    """A JSON integer longer than Python converts: its first digits and its length. Turning it
    into a string raises ValueError (as `int` of its digits does), so a field holding it is
    unreadable wherever the kinds table reads it."""

    __slots__ = ("digits", "head")

    def __init__(self, text: str) -> None:
        self.head = text[:40]
        self.digits = len(text.lstrip("-"))

    def __str__(self) -> str:
        raise ValueError(repr(self))

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits ({self.head}...)"


def _integer(text: str) -> int | HugeInteger:
    limit = sys.get_int_max_str_digits()
    return HugeInteger(text) if limit and len(text.lstrip("-")) > limit else int(text)


def parse_json(content: bytes) -> Any:
    """A service's JSON answer; an integer too long for Python becomes a `HugeInteger`."""
    try:
        # Without a parse_int hook: the decoder converts integers itself, twice as fast on a
        # revision listing (a Python call per integer was a tenth of a poller's CPU at rest).
        return json.loads(content)
    except ValueError:
        # An integer too long to convert (or not JSON at all, which fails again): once more,
        # turning such integers into HugeIntegers.
        return json.loads(content, parse_int=_integer)


def pages(
    proxy: Any,
    path: str,
    collection: str,
    query: Mapping[str, QueryValue],
    microversion: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Each page of the listing at `path` (relative to the service endpoint) as a list of raw
    objects, following next links. Raises openstacksdk's HTTP exceptions, and keystoneauth's for
    transport trouble."""
    url: str | None = path
    params: Mapping[str, QueryValue] | None = query
    followed: set[str] = set()
    while url is not None:
        response = proxy.get(
            url,
            params=params,
            headers={"Accept": "application/json"},
            microversion=microversion,
        )
        openstack.exceptions.raise_from_response(response)
        try:
            doc = parse_json(response.content)
            items = doc[collection]
        except (ValueError, KeyError, TypeError) as exc:
            raise openstack.exceptions.SDKException(
                f"GET {response.url}: no {collection!r} list in the response: {exc}"
            ) from exc
        if not isinstance(items, list):
            raise openstack.exceptions.SDKException(
                f"GET {response.url}: {collection!r} is not a list"
            )
        yield items
        url = _next_link(doc, collection) if items else None
        # The next link carries the whole query (filters, marker, limit).
        params = None
        if url is not None:
            if url in followed:
                raise openstack.exceptions.SDKException(
                    f"endless pagination: {url} was already followed"
                )
            followed.add(url)


def _next_link(doc: Mapping[str, Any], collection: str) -> str | None:
    for key in (f"{collection}_links", "links"):
        links = doc.get(key)
        if isinstance(links, list):
            for link in links:
                if isinstance(link, dict) and link.get("rel") == "next" and link.get("href"):
                    return str(link["href"])
    following = doc.get("next")
    return str(following) if isinstance(following, str) and following else None


class _Failed:
    """An exception raised by the fetching thread, handed over to be raised by the reader."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetched(items: Iterator[T], name: str, depth: int = 1) -> Generator[T, None, None]:
    """Yield what `items` yields, computed up to `depth` items ahead in a thread of its own.

    Exceptions from `items` are raised here, in order. Closing this generator early stops the
    thread after the item it is computing (a request in flight finishes within its timeout).
    """
    handover: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handover.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the reader, who raises it
            put(_Failed(exc))
            return
        finally:
            if isinstance(items, Generator):
                items.close()
        put(_END)

    worker = threading.Thread(target=fetch, name=f"fetch-{name}", daemon=True)
    worker.start()
    try:
        while True:
            got = handover.get()
            if got is _END:
                return
            if isinstance(got, _Failed):
                raise got.error
            yield cast(T, got)
    finally:
        stop.set()
