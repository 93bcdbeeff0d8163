"""The resource kinds the poller knows, in one table; the only code that reads SDK objects.

Each row says how to list the kind with openstacksdk (service proxy, resource class, listing path,
fixed query), which incremental filter the service really honours, and which fields make up the
status. Adding a kind (routers, networks, snapshots, ...) is one row: the poller only speaks to
rows. Listings leave this module as `Observation`s; no openstacksdk object gets past it.

The resources are declared here, the openstacksdk way, with exactly the fields of a status and
exactly the query keys the poller sends (openstacksdk drops unmapped keys silently).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from openstack import fields, resource

from connector.errors import ConfigError
from connector.records.model import DetailValue

#: Reads one detail value off an SDK resource.
Extractor = Callable[[Any], DetailValue]


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


@dataclass(frozen=True, slots=True)
class Since:
    """A service-side "changed since" filter: `param=<template with the watermark>`."""

    #: query key, as the row's resource maps it (client-side name)
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
class Kind:
    """One row of the kinds table."""

    #: the record kind: the middle part of the key and what `--kinds` names
    name: str
    #: the openstack.connection.Connection attribute of the service proxy
    service: str
    #: the openstacksdk resource listed (declared below)
    resource: type[resource.Resource]
    #: listing path, when it is not the resource's base_path (the `/detail` views)
    list_path: str | None = None
    #: fixed query on every listing: all projects, a projection of the status fields
    query: Mapping[str, Any] = field(default_factory=dict)
    #: the service's incremental filter; None: every poll is a full listing
    since: Since | None = None
    #: when `since` is unavailable: fields of a cheap listing diffed by revision (ids plus
    #: `revision_number`); only changed ids are then listed in full
    revision_projection: Sequence[str] = ()
    #: status values that mean "deleted" in an incremental listing
    deleted_statuses: frozenset[str] = frozenset()
    #: kind-specific status details: detail name -> resource attribute or extractor
    details: Mapping[str, str | Extractor] = field(default_factory=dict)

    def observe(self, obj: Any) -> Observation:
        """Convert one SDK resource into an Observation."""
        status = obj.status
        return Observation(
            id=str(obj.id),
            status=None if status is None else str(status),
            name=_str_or_none(obj.name),
            project_id=_str_or_none(obj.project_id),
            details={
                name: (how(obj) if callable(how) else _detail(getattr(obj, how)))
                for name, how in self.details.items()
            },
            source_updated_at=_parse_time(obj.updated_at),
            revision=_int_or_none(getattr(obj, "revision_number", None)),
            deleted=status in self.deleted_statuses,
        )

    def list(self, proxy: Any, microversion: str | None = None, **query: Any) -> Iterator[Any]:
        """Page through the kind's listing with `query` added to the row's fixed query."""
        return self.resource.list(
            proxy,
            base_path=self.list_path,
            microversion=microversion,
            **{**self.query, **query},
        )


def _attached_servers(volume: Any) -> list[str]:
    # Sorted, so that the fingerprint does not depend on the order Cinder lists attachments in.
    return sorted(str(a["server_id"]) for a in volume.attachments or () if a.get("server_id"))


# The resources below are openstacksdk resources declared the SDK's way, with only the fields
# that make up a status: building a full SDK resource (a Server has ~90 fields) costs ~1.3 ms
# per object, which is minutes per full listing at 100,000 objects; these cost ~0.2 ms. Listing,
# paging and microversion negotiation are openstacksdk's own (`Resource.list`).


class Server(resource.Resource):
    """A Nova server, as `GET /servers/detail` lists it."""

    resources_key = "servers"
    base_path = "/servers"
    allow_list = True
    _query_mapping = resource.QueryParameters(
        all_projects="all_tenants", changes_since="changes-since"
    )

    #: ACTIVE, SHUTOFF, ERROR, ...; DELETED under changes-since
    status = resource.Body("status")
    #: the owning project
    project_id = resource.Body("tenant_id")
    #: last change (whole seconds, UTC)
    updated_at = resource.Body("updated")
    vm_state = resource.Body("OS-EXT-STS:vm_state")
    task_state = resource.Body("OS-EXT-STS:task_state")
    power_state = resource.Body("OS-EXT-STS:power_state")
    #: the compute host (admin only)
    host = resource.Body("OS-EXT-SRV-ATTR:host")


class Volume(resource.Resource):
    """A Cinder volume, as `GET /volumes/detail` lists it."""

    resources_key = "volumes"
    base_path = "/volumes"
    allow_list = True
    _query_mapping = resource.QueryParameters("updated_at", all_projects="all_tenants")

    #: available, in-use, creating, error, ...
    status = resource.Body("status")
    project_id = resource.Body("os-vol-tenant-attr:tenant_id")
    #: last change (microseconds, naive UTC)
    updated_at = resource.Body("updated_at")
    #: attachment dicts, each with the server_id
    attachments = resource.Body("attachments", type=list)
    migration_status = resource.Body("os-vol-mig-status-attr:migstat")
    #: the backend host (admin only)
    host = resource.Body("os-vol-host-attr:host")


class _NeutronResource(resource.Resource):
    """What Neutron's standard-attribute resources share, and the filters the poller sends:
    `fields` (projection), `id` (repeatable) and `changed_since` (which openstacksdk's own
    network resources do not map, so it would be dropped silently)."""

    allow_list = True
    _query_mapping = resource.QueryParameters("fields", "id", "changed_since")

    status = resource.Body("status")
    project_id = resource.Body("project_id")
    #: last change (whole seconds, UTC)
    updated_at = resource.Body("updated_at")
    #: bumped by Neutron on every change of the object
    revision_number = resource.Body("revision_number", type=int)


class Port(_NeutronResource):
    """A Neutron port."""

    resources_key = "ports"
    base_path = "/ports"

    device_owner = resource.Body("device_owner")
    device_id = resource.Body("device_id")
    binding_host = resource.Body("binding:host_id")
    admin_state_up = resource.Body("admin_state_up", type=bool)


class FloatingIP(_NeutronResource):
    """A Neutron floating IP."""

    resources_key = "floatingips"
    base_path = "/floatingips"

    #: a floating IP has no name: its address names it
    name = resource.Body("floating_ip_address")
    fixed_ip_address = resource.Body("fixed_ip_address")
    port_id = resource.Body("port_id")
    router_id = resource.Body("router_id")


class Network(_NeutronResource):
    """A Neutron network."""

    resources_key = "networks"
    base_path = "/networks"

    admin_state_up = resource.Body("admin_state_up", type=bool)


class Router(_NeutronResource):
    """A Neutron router."""

    resources_key = "routers"
    base_path = "/routers"

    admin_state_up = resource.Body("admin_state_up", type=bool)


def projection(res: type[resource.Resource]) -> list[str]:
    """Neutron's `fields=` for every field `res` declares (id, name, status, ...)."""
    return sorted(
        {
            value.name
            for cls in res.__mro__
            for value in vars(cls).values()
            if isinstance(value, fields.Body)
        }
    )


_NEUTRON_SINCE = Since("changed_since", may_be_rejected=True)
_REVISIONS = ("id", "revision_number")

#: The kinds table. A row per kind; the poller has no per-kind code.
KINDS: Mapping[str, Kind] = {
    row.name: row
    for row in (
        Kind(
            name="server",
            service="compute",
            resource=Server,
            list_path="/servers/detail",
            query={"all_projects": True},
            #: inclusive; lists DELETED servers until they are archived
            since=Since("changes_since"),
            deleted_statuses=frozenset({"DELETED"}),
            details={
                "vm_state": "vm_state",
                "task_state": "task_state",
                "power_state": "power_state",
                "host": "host",
            },
        ),
        Kind(
            name="volume",
            service="block_storage",
            resource=Volume,
            list_path="/volumes/detail",
            query={"all_projects": True},
            #: deleted volumes are not listed: they vanish, and a resync turns them into tombstones
            since=Since("updated_at", template="gte:{}", min_microversion="3.60"),
            details={
                "attachments": _attached_servers,
                "migration_status": "migration_status",
                "host": "host",
            },
        ),
        Kind(
            name="port",
            service="network",
            resource=Port,
            query={"fields": projection(Port)},
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            details={
                "device_owner": "device_owner",
                "device_id": "device_id",
                "binding_host": "binding_host",
                "admin_state_up": "admin_state_up",
            },
        ),
        Kind(
            name="floatingip",
            service="network",
            resource=FloatingIP,
            query={"fields": projection(FloatingIP)},
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            details={
                "fixed_ip_address": "fixed_ip_address",
                "port_id": "port_id",
                "router_id": "router_id",
            },
        ),
        Kind(
            name="network",
            service="network",
            resource=Network,
            query={"fields": projection(Network)},
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            details={"admin_state_up": "admin_state_up"},
        ),
        Kind(
            name="router",
            service="network",
            resource=Router,
            query={"fields": projection(Router)},
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            details={"admin_state_up": "admin_state_up"},
        ),
    )
}


def resolve_kind_names(names: Iterable[str]) -> list[str]:
    """Kind names from the table, in the order given; plural forms ("servers") are accepted."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name not in KINDS and name.endswith("s") and name[:-1] in KINDS:
            name = name[:-1]
        if name not in KINDS:
            raise ValueError(f"unknown kind {raw!r}; known kinds: {', '.join(KINDS)}")
        if name not in out:
            out.append(name)
    return out


def kinds_for(names: Iterable[str]) -> list[Kind]:
    """The table rows for `names` (already validated by the settings)."""
    try:
        return [KINDS[name] for name in resolve_kind_names(names)]
    except ValueError as exc:
        raise ConfigError(f"site.kinds: {exc}") from exc


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _detail(value: Any) -> DetailValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return str(value)


def _parse_time(value: Any) -> datetime | None:
    """The services' ISO 8601 times (with `Z`, an offset, or naive meaning UTC) as aware UTC."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
