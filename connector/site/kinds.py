"""The resource kinds the poller knows, in one table; the only code that reads SDK objects.

Each row says how to list the kind with openstacksdk (service proxy, resource class, listing path,
fixed query), which incremental filter the service really honours, and which fields make up the
status. Adding a kind (routers, networks, snapshots, ...) is one row: the poller only speaks to
rows. Listings leave this module as `Observation`s; no openstacksdk object gets past it.

Where openstacksdk has no query mapping for a filter the service understands (it drops unknown
keys silently), the row's resource is a subclass declared here that adds exactly that key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from openstack import resource
from openstack.block_storage.v3 import volume as _volume
from openstack.compute.v2 import server as _server
from openstack.network.v2 import floating_ip as _floating_ip
from openstack.network.v2 import network as _network
from openstack.network.v2 import port as _port
from openstack.network.v2 import router as _router

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
    #: the SDK resource listed (a subclass declared here when the SDK lacks a query key)
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
    #: resource attributes of the common fields
    name_attr: str = "name"
    #: kind-specific status details: detail name -> resource attribute or extractor
    details: Mapping[str, str | Extractor] = field(default_factory=dict)

    def observe(self, obj: Any) -> Observation:
        """Convert one SDK resource into an Observation."""
        status = obj.status
        return Observation(
            id=str(obj.id),
            status=None if status is None else str(status),
            name=_str_or_none(getattr(obj, self.name_attr)),
            project_id=_str_or_none(obj.project_id),
            details={
                name: (how(obj) if callable(how) else _detail(getattr(obj, how)))
                for name, how in self.details.items()
            },
            source_updated_at=_parse_time(obj.updated_at),
            revision=_int_or_none(obj.get("revision_number")),
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


class _NeutronSince:
    """Neutron's `changed_since` (standard-attr timestamps), which openstacksdk does not map."""

    _query_mapping = resource.QueryParameters(
        "fields", "id", "changed_since", "project_id", "sort_key", "sort_dir"
    )


class Port(_NeutronSince, _port.Port):
    """openstacksdk's Port, listable with `changed_since`."""


class FloatingIP(_NeutronSince, _floating_ip.FloatingIP):
    """openstacksdk's FloatingIP, listable with `changed_since`."""


class Router(_NeutronSince, _router.Router):
    """openstacksdk's Router, listable with `changed_since`."""


class Network(_NeutronSince, _network.Network):
    """openstacksdk's Network, listable with `changed_since`."""


_NEUTRON_SINCE = Since("changed_since", may_be_rejected=True)
_REVISIONS = ("id", "revision_number")

#: The kinds table. A row per kind; the poller has no per-kind code.
KINDS: Mapping[str, Kind] = {
    row.name: row
    for row in (
        Kind(
            name="server",
            service="compute",
            resource=_server.Server,
            list_path="/servers/detail",
            query={"all_projects": True},
            #: inclusive; lists DELETED servers until they are archived
            since=Since("changes_since"),
            deleted_statuses=frozenset({"DELETED"}),
            details={
                "vm_state": "vm_state",
                "task_state": "task_state",
                "power_state": "power_state",
                "host": "compute_host",
            },
        ),
        Kind(
            name="volume",
            service="block_storage",
            resource=_volume.Volume,
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
            query={
                "fields": [
                    "id",
                    "name",
                    "status",
                    "project_id",
                    "revision_number",
                    "updated_at",
                    "device_owner",
                    "device_id",
                    "binding:host_id",
                    "admin_state_up",
                ]
            },
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            details={
                "device_owner": "device_owner",
                "device_id": "device_id",
                "binding_host": "binding_host_id",
                "admin_state_up": "is_admin_state_up",
            },
        ),
        Kind(
            name="floatingip",
            service="network",
            resource=FloatingIP,
            query={
                "fields": [
                    "id",
                    "floating_ip_address",
                    "status",
                    "project_id",
                    "revision_number",
                    "updated_at",
                    "fixed_ip_address",
                    "port_id",
                    "router_id",
                ]
            },
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            name_attr="floating_ip_address",
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
            query={
                "fields": [
                    "id",
                    "name",
                    "status",
                    "project_id",
                    "revision_number",
                    "updated_at",
                    "admin_state_up",
                ]
            },
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            details={"admin_state_up": "is_admin_state_up"},
        ),
        Kind(
            name="router",
            service="network",
            resource=Router,
            query={
                "fields": [
                    "id",
                    "name",
                    "status",
                    "project_id",
                    "revision_number",
                    "updated_at",
                    "admin_state_up",
                ]
            },
            since=_NEUTRON_SINCE,
            revision_projection=_REVISIONS,
            details={"admin_state_up": "is_admin_state_up"},
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
