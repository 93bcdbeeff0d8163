"""The resource kinds the poller knows, in one table; the only code that reads listed objects.

Each row says how to list the kind (service proxy, listing path, collection key, fixed query),
which incremental filter the service really honours, and where the status fields are in the
service's JSON (wire names, one line each, as openstacksdk declares its resources). Adding a kind
(routers, networks, snapshots, ...) is one row, and its name in `records.model.KIND_NAMES` (which
the settings check without importing openstacksdk): the poller only speaks to rows.

Listings go through openstacksdk's service proxies (auth, endpoints, microversions, retries) but
are parsed straight from JSON (`listing.py`): building an openstacksdk `Resource` per object cost
more than everything else a poll does. Listings leave this module as `Observation`s; nothing
SDK-typed or raw gets past it. Query keys are wire names, sent as written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import openstack.exceptions

from connector.errors import ConfigError
from connector.records.checks import fits_in_long, resolve_kind_names
from connector.records.model import DetailValue
from connector.site.listing import HugeInteger, QueryValue, pages, parse_json, prefetched

#: Reads one detail value off a listed object (the service's JSON, as parsed).
Extractor = Callable[[Mapping[str, Any]], DetailValue]

#: Pages fetched ahead of the one being converted.
PREFETCH_PAGES = 1

#: The longest object id the poller publishes: the services' ids are UUIDs or short names, and
#: the top keeps ids of up to 255 characters (the SQL sink's column).
ID_MAX_CHARS = 255


@dataclass(frozen=True, slots=True)
class Observation:
    """One object's status as a listing showed it, before the publisher gives it a sequence."""

    id: str
    status: str | None
    name: str | None = None
    project_id: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)
    source_updated_at: datetime | None = None
    revision: int | None = None
    #: the listing reported the object as deleted (Nova `changes-since` shows DELETED servers)
    deleted: bool = False
    #: the object was listed without the field only admins see (`Kind.admin_field`): the
    #: poller's credentials see their own projects only, not the whole site
    unprivileged: bool = False


@dataclass(frozen=True, slots=True)
class Since:
    """A service-side "changed since" filter: `param=<template with the watermark>`."""

    #: query key, as sent on the wire
    param: str
    #: how the watermark (ISO 8601, UTC, `Z`) is written into the value
    template: str = "{}"
    #: the lowest microversion at which the service honours the filter; below it, the service
    #: ignores the key silently and answers with a full listing
    min_microversion: str | None = None
    #: sites may answer 400 (Neutron with filter validation and without the extension): try it,
    #: and fall back for good on a 400
    may_be_rejected: bool = False

    def value(self, watermark: datetime) -> str:
        return self.template.format(watermark.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


@dataclass(frozen=True, slots=True)
class Count:
    """A service's cheap total of the kind's objects (one tiny answer): `GET path` with the
    row's fixed query, the number at `keys` in the JSON."""

    path: str
    #: where the number is: keys from the top of the document
    keys: Sequence[str]
    #: the lowest microversion that serves it (below: 404)
    min_microversion: str | None = None


@dataclass(frozen=True, slots=True)
class Sweep:
    """A cheap listing of every id, to find deletions an incremental listing cannot show
    (deleted objects are not listed at all). With a `count`, the sweep runs only when the
    service's total differs from the objects the poller knows; without one, every
    `deletion_sweep_every` incremental polls."""

    path: str
    collection: str
    #: fixed query, wire names (all projects, `fields=id`, page size)
    query: Mapping[str, QueryValue]
    count: Count | None = None


class Unreadable(ValueError):
    """A listed object the poller cannot convert, or its record cannot be encoded or produced:
    it is skipped, counted and reported."""

    def __init__(self, kind: str, object_id: str | None, reason: str) -> None:
        super().__init__(f"{kind} {object_id or '(no id)'}: {reason}")
        self.kind = kind
        #: None when the id itself is what is missing
        self.object_id = object_id
        self.reason = reason


#: Called with each listed object that cannot be converted; the listing goes on.
SkipBad = Callable[[Unreadable], None]


@dataclass(frozen=True, slots=True)
class Wire:
    """Where a listed object keeps the fields every status has (wire names)."""

    id: str = "id"
    #: ACTIVE, SHUTOFF, available, in-use, DOWN, ...; DELETED under Nova's changes-since
    status: str = "status"
    name: str = "name"
    #: the owning project
    project_id: str = "project_id"
    #: the service's last change time
    updated_at: str = "updated_at"
    #: the service's revision counter, where the API has one
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class Kind:
    """One row of the kinds table."""

    #: the record kind: the middle part of the key and what `--kinds` names
    name: str
    #: the openstack.connection.Connection attribute of the service proxy
    service: str
    #: listing path under the service endpoint (the `/detail` views where there are two)
    path: str
    #: the key of the object list in a listing's JSON
    collection: str
    #: fixed query on every listing (all projects, ...), wire names
    query: Mapping[str, QueryValue] = field(default_factory=dict)
    #: the service honours `fields=`: every listing asks for just the fields this row reads
    projected: bool = False
    #: the service's incremental filter; None: every poll is a full listing
    since: Since | None = None
    #: the filter on creation time, listed with `since` at every incremental poll, where the
    #: service leaves an object's change time empty until its first update (Cinder: a volume
    #: stuck in `creating` is never listed by `updated_at`)
    created: Since | None = None
    #: a field the service shows only to callers allowed to list every project; an object
    #: listed without it means the `all_tenants` query was dropped silently (Cinder does so
    #: for a user without the admin role) and the site is seen in part
    admin_field: str | None = None
    #: when `since` is unavailable: the fields (wire names) of a cheap listing diffed by revision;
    #: only changed ids are then listed in full
    revision_projection: Sequence[str] = ()
    #: added to `query` for that cheap listing (a larger page)
    revision_query: Mapping[str, QueryValue] = field(default_factory=dict)
    #: status values that mean "deleted" in an incremental listing
    deleted_statuses: frozenset[str] = frozenset()
    #: where the common fields are in the JSON
    wire: Wire = Wire()
    #: kind-specific status details: detail name -> wire name or extractor
    details: Mapping[str, str | Extractor] = field(default_factory=dict)
    #: where deleted objects are not listed by `since`: how to find them without a full listing
    sweep: Sweep | None = None

    def fields(self) -> list[str]:
        """The wire names this row reads, for a `fields=` projection."""
        wire = self.wire
        names = {wire.id, wire.status, wire.name, wire.project_id, wire.updated_at}
        if self.admin_field is not None:
            names.add(self.admin_field)
        if wire.revision is not None:
            names.add(wire.revision)
        names.update(how for how in self.details.values() if isinstance(how, str))
        return sorted(names)

    def observe(self, raw: Mapping[str, Any]) -> Observation:
        """Convert one listed object (parsed JSON) into an Observation; Unreadable when a field
        the poller relies on is missing or malformed (no id, a status that is not a string, a
        time that does not parse or is off the calendar in UTC, a revision that is not a
        number) or anything else about the object fails the conversion."""
        object_id = self.object_id(raw)
        try:
            return self._observe(raw, object_id)
        except Unreadable:
            raise
        except Exception as exc:
            # The object is foreign input: whatever its fields make a conversion (an extractor
            # included) raise is about this object, and must not end the listing.
            raise Unreadable(self.name, object_id, f"{type(exc).__name__}: {exc}") from exc

    def _observe(self, raw: Mapping[str, Any], object_id: str) -> Observation:
        wire = self.wire
        status = raw.get(wire.status)
        if status is not None and not isinstance(status, str):
            raise Unreadable(self.name, object_id, f"{wire.status} is not a string: {status!r}")
        try:
            updated = _parse_time(raw.get(wire.updated_at))
        except (ValueError, TypeError, OverflowError) as exc:
            raise Unreadable(self.name, object_id, f"{wire.updated_at}: {exc}") from exc
        try:
            revision = None if wire.revision is None else _int_or_none(raw.get(wire.revision))
        except (ValueError, TypeError, OverflowError) as exc:
            raise Unreadable(self.name, object_id, f"{wire.revision}: {exc}") from exc
        details: dict[str, DetailValue] = {}
        for name, how in self.details.items():
            try:
                details[name] = _detail(raw.get(how) if isinstance(how, str) else how(raw))
            except ValueError as exc:
                raise Unreadable(self.name, object_id, f"detail {name}: {exc}") from exc
        return Observation(
            id=object_id,
            status=status,
            name=_str_or_none(raw.get(wire.name)),
            project_id=_str_or_none(raw.get(wire.project_id)),
            details=details,
            source_updated_at=updated,
            revision=revision,
            deleted=status in self.deleted_statuses,
            unprivileged=self.admin_field is not None and self.admin_field not in raw,
        )

    def object_id(self, raw: Mapping[str, Any]) -> str:
        """The listed object's id; Unreadable when there is none, or it is too long or not
        UTF-8 (a lone surrogate)."""
        object_id = raw.get(self.wire.id) if isinstance(raw, Mapping) else None
        if object_id is None or isinstance(object_id, dict | list | bool) or object_id == "":
            name = raw.get(self.wire.name) if isinstance(raw, Mapping) else None
            raise Unreadable(self.name, None, f"no {self.wire.id} (name {name!r})")
        if isinstance(object_id, HugeInteger):
            raise Unreadable(self.name, object_id.head, f"{self.wire.id} is {object_id!r}")
        text = str(object_id)
        # The id goes into keys and into `?id=` queries: one that cannot be encoded, or is too
        # long for a query or a row at the top, would fail the whole request, not this object.
        shown = text[:80].encode("utf-8", "backslashreplace").decode()
        if len(text) > ID_MAX_CHARS:
            raise Unreadable(
                self.name,
                shown,
                f"{self.wire.id} is {len(text)} characters (at most {ID_MAX_CHARS})",
            )
        try:
            text.encode()
        except UnicodeEncodeError:
            raise Unreadable(
                self.name, shown, f"{self.wire.id} is not UTF-8 (a lone surrogate)"
            ) from None
        return text

    def observations(
        self,
        proxy: Any,
        query: Mapping[str, QueryValue] | None = None,
        microversion: str | None = None,
        skip: SkipBad | None = None,
    ) -> Iterator[Observation]:
        """Every object of the kind's listing with `query` added to the row's fixed query, the
        next page fetched while this one is converted. Objects that cannot be converted go to
        `skip` (without one, Unreadable is raised)."""
        for page in self.observation_pages(proxy, query, microversion, skip):
            yield from page

    def observation_pages(
        self,
        proxy: Any,
        query: Mapping[str, QueryValue] | None = None,
        microversion: str | None = None,
        skip: SkipBad | None = None,
        prefetch: bool = True,
    ) -> Iterator[list[Observation]]:
        """`observations`, a page at a time. Without `prefetch` the next page is asked for only
        when this one has been taken: what happens in between comes before it."""
        full = self._query(query or {})
        for page in self._pages(proxy, full, microversion, prefetch):
            converted = []
            for raw in page:
                try:
                    converted.append(self.observe(raw))
                except Unreadable as exc:
                    if skip is None:
                        raise
                    skip(exc)
            yield converted

    def revisions(self, proxy: Any, skip: SkipBad | None = None) -> dict[str, int | None]:
        """id -> revision of every object, from the cheap `revision_projection` listing (an
        unreadable revision is None: the object is then listed in full)."""
        revision_key = self.wire.revision or "revision_number"
        query = self._query({**self.revision_query, "fields": list(self.revision_projection)})
        out: dict[str, int | None] = {}
        for page in self._pages(proxy, query, None):
            for raw in page:
                try:
                    object_id = self.object_id(raw)
                except Unreadable as exc:
                    if skip is None:
                        raise
                    skip(exc)
                    continue
                try:
                    out[object_id] = _int_or_none(raw.get(revision_key))
                except (ValueError, TypeError, OverflowError):
                    out[object_id] = None
        return out

    def listed_ids(self, proxy: Any, skip: SkipBad | None = None) -> set[str]:
        """Every id, from the row's `sweep` listing."""
        sweep = self.sweep
        assert sweep is not None, f"{self.name} has no sweep listing"
        out: set[str] = set()
        listed = pages(proxy, sweep.path, sweep.collection, sweep.query, None)
        for page in prefetched(listed, self.name, PREFETCH_PAGES):
            for raw in page:
                try:
                    out.add(self.object_id(raw))
                except Unreadable as exc:
                    if skip is None:
                        raise
                    skip(exc)
        return out

    def total(self, proxy: Any) -> int:
        """The service's total count of the kind's objects (the sweep's `count`)."""
        count = self.sweep.count if self.sweep is not None else None
        assert count is not None, f"{self.name} has no count"
        response = proxy.get(
            count.path,
            params=dict(self.query),
            headers={"Accept": "application/json"},
            microversion=count.min_microversion,
        )
        openstack.exceptions.raise_from_response(response)
        try:
            doc: Any = parse_json(response.content)
            for key in count.keys:
                doc = doc[key]
            return int(doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise openstack.exceptions.SDKException(
                f"GET {response.url}: no count at {'.'.join(count.keys)}: {exc}"
            ) from exc

    def _query(self, extra: Mapping[str, QueryValue]) -> dict[str, QueryValue]:
        base: dict[str, QueryValue] = dict(self.query)
        if self.projected:
            base["fields"] = self.fields()
        return {**base, **extra}

    def _pages(
        self,
        proxy: Any,
        query: Mapping[str, QueryValue],
        microversion: str | None,
        prefetch: bool = True,
    ) -> Iterator[list[dict[str, Any]]]:
        listed = pages(proxy, self.path, self.collection, query, microversion)
        return prefetched(listed, self.name, PREFETCH_PAGES) if prefetch else listed


def _attached_servers(volume: Mapping[str, Any]) -> DetailValue:
    # Sorted, so that the fingerprint does not depend on the order Cinder lists attachments in.
    return sorted(
        str(a["server_id"]) for a in volume.get("attachments") or () if a.get("server_id")
    )


#: Neutron lists a whole collection in one response unless asked for pages; ask, so a large
#: site answers page by page (the next links are followed).
_NEUTRON_PAGE: Mapping[str, QueryValue] = {"limit": "1000"}
#: The cheap listings (ids, or ids and revisions: 45-70 bytes an object) in pages ten times as
#: large: a request cost the poller about as much CPU as parsing a thousand such objects, and a
#: poller at rest lists every port by revision each interval (11 of its 15 requests at 10,000
#: ports; docs/performance.md).
_NEUTRON_CHEAP_PAGE: Mapping[str, QueryValue] = {"limit": "10000"}
_NEUTRON_SINCE = Since("changed_since", may_be_rejected=True)
_NEUTRON_WIRE = Wire(revision="revision_number")
_REVISIONS = ("id", "revision_number")


def _neutron_sweep(collection: str) -> Sweep:
    """Neutron has no count: `fields=id` listings (about 45 bytes an object) on a schedule."""
    return Sweep(f"/{collection}", collection, {**_NEUTRON_CHEAP_PAGE, "fields": ["id"]})


#: The kinds table. A row per kind; the poller has no per-kind code.
KINDS: Mapping[str, Kind] = {
    row.name: row
    for row in (
        Kind(
            name="server",
            service="compute",
            path="/servers/detail",
            collection="servers",
            query={"all_tenants": "True"},
            #: inclusive; lists DELETED servers until they are archived
            since=Since("changes-since"),
            deleted_statuses=frozenset({"DELETED"}),
            #: `updated` has whole seconds, UTC
            wire=Wire(project_id="tenant_id", updated_at="updated"),
            details={
                "vm_state": "OS-EXT-STS:vm_state",
                "task_state": "OS-EXT-STS:task_state",
                "power_state": "OS-EXT-STS:power_state",
                #: the compute host (admin only)
                "host": "OS-EXT-SRV-ATTR:host",
            },
        ),
        Kind(
            name="volume",
            service="block_storage",
            path="/volumes/detail",
            collection="volumes",
            query={"all_tenants": "True"},
            #: deleted volumes are not listed: they vanish, and a resync turns them into tombstones
            since=Since("updated_at", template="gte:{}", min_microversion="3.60"),
            #: a new volume's `updated_at` is null until its first update
            created=Since("created_at", template="gte:{}", min_microversion="3.60"),
            #: volume_extension:volume_host_attribute, admin only by default
            admin_field="os-vol-host-attr:host",
            #: `updated_at` has microseconds and no zone (UTC)
            wire=Wire(project_id="os-vol-tenant-attr:tenant_id"),
            #: deleted volumes vanish from lists: the summary's count (3.12+) tells when, and the
            #: plain listing (id, name, links) names them
            sweep=Sweep(
                "/volumes",
                "volumes",
                {"all_tenants": "True"},
                Count("/volumes/summary", ("volume-summary", "total_count"), "3.12"),
            ),
            details={
                "attachments": _attached_servers,
                "migration_status": "os-vol-mig-status-attr:migstat",
                #: the backend host (admin only)
                "host": "os-vol-host-attr:host",
            },
        ),
        Kind(
            name="port",
            service="network",
            query=_NEUTRON_PAGE,
            path="/ports",
            collection="ports",
            projected=True,
            since=_NEUTRON_SINCE,
            sweep=_neutron_sweep("ports"),
            revision_projection=_REVISIONS,
            revision_query=_NEUTRON_CHEAP_PAGE,
            wire=_NEUTRON_WIRE,
            details={
                "device_owner": "device_owner",
                "device_id": "device_id",
                "binding_host": "binding:host_id",
                "admin_state_up": "admin_state_up",
            },
        ),
        Kind(
            name="floatingip",
            service="network",
            query=_NEUTRON_PAGE,
            path="/floatingips",
            collection="floatingips",
            projected=True,
            since=_NEUTRON_SINCE,
            sweep=_neutron_sweep("floatingips"),
            revision_projection=_REVISIONS,
            revision_query=_NEUTRON_CHEAP_PAGE,
            #: a floating IP has no name: its address names it
            wire=Wire(name="floating_ip_address", revision="revision_number"),
            details={
                "fixed_ip_address": "fixed_ip_address",
                "port_id": "port_id",
                "router_id": "router_id",
            },
        ),
        Kind(
            name="network",
            service="network",
            query=_NEUTRON_PAGE,
            path="/networks",
            collection="networks",
            projected=True,
            since=_NEUTRON_SINCE,
            sweep=_neutron_sweep("networks"),
            revision_projection=_REVISIONS,
            revision_query=_NEUTRON_CHEAP_PAGE,
            wire=_NEUTRON_WIRE,
            details={"admin_state_up": "admin_state_up"},
        ),
        Kind(
            name="router",
            service="network",
            query=_NEUTRON_PAGE,
            path="/routers",
            collection="routers",
            projected=True,
            since=_NEUTRON_SINCE,
            sweep=_neutron_sweep("routers"),
            revision_projection=_REVISIONS,
            revision_query=_NEUTRON_CHEAP_PAGE,
            wire=_NEUTRON_WIRE,
            details={"admin_state_up": "admin_state_up"},
        ),
    )
}


def kinds_for(names: Iterable[str]) -> list[Kind]:
    """The table rows for `names` (already validated by the settings)."""
    try:
        return [KINDS[name] for name in resolve_kind_names(names)]
    except ValueError as exc:
        raise ConfigError(f"site.kinds: {exc}") from exc


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool | dict | list):
        raise TypeError(f"not a number: {value!r}")
    return None if value is None else _long(int(value))


def _detail(value: Any) -> DetailValue:
    """A detail value of the record's types, an int within 64 bits: the publisher's records are
    encoded without checking their details again (`Codec.encode`, `checked`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _long(value)
    if isinstance(value, float) and not math.isfinite(value):
        # Avro carries it, but no JSON sink can: the top layer would refuse the record.
        raise ValueError(f"{value} is not a finite number")
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return str(value)


def _long(value: int) -> int:
    if not fits_in_long(value):
        raise ValueError(f"{value} does not fit in 64 bits")
    return value


def _parse_time(value: Any) -> datetime | None:
    """The services' ISO 8601 times (with `Z`, an offset, or naive meaning UTC) as aware UTC."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
