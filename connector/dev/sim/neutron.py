"""Neutron (networking v2.0) for a simulated site: ports, networks, routers and floating IPs.

Listing follows Neutron: sorted by id, paged only when `limit` is given (`<collection>_links`
with a next link), `fields=` projection, `revision_number` that grows on every change,
`updated_at` in whole seconds, an admin sees every project. Filter validation is on: an unknown
filter is a 400. `changed_since` is either such an unknown filter (the default, as deployments
with filter validation answer) or honoured as `updated_at >= changed_since`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from connector.dev.sim.api import (
    ApiError,
    Request,
    Response,
    json_response,
    neutron_fault,
    next_link,
)
from connector.dev.sim.keystone import Keystone
from connector.dev.sim.model import (
    FLOATINGIP,
    NETWORK,
    PORT,
    ROUTER,
    FloatingIP,
    Network,
    Port,
    Router,
    SimObject,
    iso_z,
    parse_time,
)
from connector.dev.sim.store import Site, TimeRange

#: Collection name -> (kind, resource name used in messages).
COLLECTIONS = {
    "ports": (PORT, "Port"),
    "networks": (NETWORK, "Network"),
    "routers": (ROUTER, "Router"),
    "floatingips": (FLOATINGIP, "Floating IP"),
}

_COMMON_FILTERS = {
    "id": lambda o: o.id,
    "name": lambda o: o.name,
    "status": lambda o: o.status,
    "project_id": lambda o: o.project_id,
    "tenant_id": lambda o: o.project_id,
    "revision_number": lambda o: str(o.revision),
}

#: Per collection, the equality filters Neutron validates (wire name -> value as a string).
FILTERS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "ports": {
        **_COMMON_FILTERS,
        "network_id": lambda o: o.network_id,
        "device_id": lambda o: o.device_id,
        "device_owner": lambda o: o.device_owner,
        "mac_address": lambda o: o.mac_address,
        "binding:host_id": lambda o: o.host,
        "admin_state_up": lambda o: str(o.admin_state_up),
    },
    "networks": {
        **_COMMON_FILTERS,
        "admin_state_up": lambda o: str(o.admin_state_up),
        "shared": lambda o: str(o.shared),
    },
    "routers": {**_COMMON_FILTERS, "admin_state_up": lambda o: str(o.admin_state_up)},
    "floatingips": {
        **_COMMON_FILTERS,
        "port_id": lambda o: o.port_id,
        "router_id": lambda o: o.router_id,
        "floating_ip_address": lambda o: o.floating_ip_address,
        "floating_network_id": lambda o: o.floating_network_id,
    },
}

#: Parameters that are not filters.
_CONTROL = {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"}
#: Fields a listing takes straight from the object when they are all it asks for (the pollers'
#: id and revision listings) and none of the kind is served malformed: rendering every port in
#: full, two formatted times each, to keep two fields was most of a full-size site's CPU while
#: its poller was at rest (docs/performance.md).
_PLAIN: dict[str, Callable[[SimObject], Any]] = {
    "id": lambda obj: obj.id,
    "revision_number": lambda obj: obj.revision,
}

_EXTENSIONS = ("standard-attr-revisions", "standard-attr-timestamp", "filter-validation")


@lru_cache(maxsize=4096)
def subnet_of(network_id: str) -> str:
    """The one subnet of a network, derived from its id."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, network_id or "none"))


#: neutron-lib's "could not be found" messages end with a full stop for ports and networks, not
#: for routers and floating IPs (its l3 exceptions).
_FULL_STOP = {"Port", "Network"}


def not_found(label: str, object_id: str) -> ApiError:
    """An unknown object (shown, or given as a marker): a 404 of the collection's own type,
    `PortNotFound` for a port, as neutron-server 29.0.0 answers."""
    message = f"{label} {object_id} could not be found" + ("." if label in _FULL_STOP else "")
    return ApiError(404, neutron_fault(404, message, f"{label.replace(' ', '')}NotFound"))


def _limit(request: Request) -> int | None:
    """`limit` as neutron-server 29.0.0 reads it: an integer 0 or greater, else a 400 of type
    `BadRequest` with its own message; None without one."""
    raw = request.arg("limit")
    try:
        limit = None if raw is None else int(raw)
    except ValueError:
        limit = -1
    if limit is not None and limit < 0:
        message = f"Bad limit request: Limit must be an integer 0 or greater and not '{raw}'."
        raise ApiError(400, neutron_fault(400, message, "BadRequest"))
    return limit


class Neutron:
    """Serves the paths under `/networking`."""

    def __init__(
        self, site: Site, keystone: Keystone, base_url: str, accept_changed_since: bool
    ) -> None:
        self.site = site
        self.keystone = keystone
        self.base_url = base_url
        self.accept_changed_since = accept_changed_since

    def handle(self, request: Request, rest: str) -> Response:
        path = rest.rstrip("/")
        if request.method == "GET" and path == "":
            return json_response(
                200,
                {
                    "versions": [
                        {
                            "status": "CURRENT",
                            "id": "v2.0",
                            "links": [{"href": f"{self.base_url}/networking/v2.0/", "rel": "self"}],
                        }
                    ]
                },
            )
        self.keystone.check(request)
        if request.method != "GET":
            raise ApiError(405, neutron_fault(405, "The method is not allowed."))
        if path == "/v2.0":
            return json_response(200, {"resources": self._resources()})
        if path == "/v2.0/extensions":
            return json_response(200, {"extensions": self._extensions()})
        match = re.fullmatch(r"/v2\.0/([a-z]+)(?:/([^/]+))?", path)
        if match is None or match.group(1) not in COLLECTIONS:
            raise ApiError(404, neutron_fault(404, "The resource could not be found."))
        collection, object_id = match.groups()
        if object_id is not None:
            return json_response(200, self._show(request, collection, object_id))
        return json_response(200, self._list(request, collection))

    def _resources(self) -> list[dict[str, Any]]:
        return [
            {
                "name": kind,
                "collection": collection,
                "links": [{"href": f"{self.base_url}/networking/v2.0/{collection}", "rel": "self"}],
            }
            for collection, (kind, _) in COLLECTIONS.items()
        ]

    def _extensions(self) -> list[dict[str, Any]]:
        names = [
            e for e in _EXTENSIONS if e != "filter-validation" or not self.accept_changed_since
        ]
        return [
            {
                "alias": name,
                "name": name,
                "description": "",
                "updated": "2017-01-01T00:00:00-00:00",
                "links": [],
            }
            for name in names
        ]

    def _show(self, request: Request, collection: str, object_id: str) -> dict[str, Any]:
        kind, label = COLLECTIONS[collection]
        fields = self._fields(request)
        with self.site.lock:
            obj = self.site.tables[kind].by_id.get(object_id)
            if obj is None:
                raise not_found(label, object_id)
            doc = self.site.spoil(kind, obj.id, self.render(obj), "updated_at")
            return {kind: self._project(doc, fields)}

    def _list(self, request: Request, collection: str) -> dict[str, Any]:
        kind, label = COLLECTIONS[collection]
        filters = FILTERS[collection]
        span: TimeRange | None = None
        wanted_values: list[tuple[Callable[[Any], str | None], set[str]]] = []
        for name, values in request.query.items():
            if name in _CONTROL:
                continue
            if name == "changed_since" and self.accept_changed_since:
                span = TimeRange(lo=self._time(values[-1]))
            elif name in filters:
                wanted_values.append((filters[name], set(values)))
            else:
                raise ApiError(
                    400, neutron_fault(400, f"['{name}'] is invalid attribute for filtering")
                )
        fields = self._fields(request)
        limit = _limit(request)

        def wanted(obj: SimObject) -> bool:
            return all(get(obj) in values for get, values in wanted_values)

        with self.site.lock:
            table = self.site.tables[kind]
            after = None
            # As neutron-server 29.0.0 does: a marker counts only with a limit, and an unknown
            # one is a 404 of the collection's own type.
            marker = request.arg("marker") if limit else None
            if marker is not None:
                marker_obj = table.by_id.get(marker)
                if marker_obj is None:
                    raise not_found(label, marker)
                after = marker_obj.key
            page = table.scan(after=after, span=span, match=wanted, limit=limit or None)
            if (
                fields is not None
                and set(fields) <= _PLAIN.keys()
                and not self.site.corrupt.get(kind)
            ):
                items = [{name: _PLAIN[name](obj) for name in fields} for obj in page]
            else:
                items = [
                    self._project(
                        self.site.spoil(kind, obj.id, self.render(obj), "updated_at"), fields
                    )
                    for obj in page
                ]
        doc: dict[str, Any] = {collection: items}
        if limit and len(page) == limit:
            path = f"/networking/v2.0/{collection}"
            doc[f"{collection}_links"] = [
                {"rel": "next", "href": next_link(request, path, limit, page[-1].id)}
            ]
        return doc

    def _time(self, raw: str) -> float:
        try:
            return parse_time(raw)
        except ValueError as exc:
            raise ApiError(
                400,
                neutron_fault(400, f"Invalid input for operation: '{raw}' is not a valid time."),
            ) from exc

    @staticmethod
    def _fields(request: Request) -> list[str] | None:
        values = request.query.get("fields")
        if not values:
            return None
        return [name for value in values for name in value.split(",") if name]

    @staticmethod
    def _project(doc: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
        if fields is None:
            return doc
        return {name: doc[name] for name in fields if name in doc}

    def render(self, obj: SimObject) -> dict[str, Any]:
        """An object as Neutron shows it; call with the lock held."""
        doc: dict[str, Any] = {
            "id": obj.id,
            "name": obj.name,
            "status": obj.status,
            "project_id": obj.project_id,
            "tenant_id": obj.project_id,
            "description": "",
            "tags": [],
            "created_at": iso_z(obj.created),
            "updated_at": iso_z(obj.updated),
            "revision_number": obj.revision,
        }
        if isinstance(obj, Port):
            doc.update(
                {
                    "network_id": obj.network_id,
                    "admin_state_up": obj.admin_state_up,
                    "mac_address": obj.mac_address,
                    "fixed_ips": [
                        {"subnet_id": subnet_of(obj.network_id), "ip_address": obj.ip_address}
                    ],
                    "device_id": obj.device_id,
                    "device_owner": obj.device_owner,
                    "binding:host_id": obj.host,
                    "binding:vif_type": "ovs" if obj.host else "unbound",
                    "binding:vnic_type": "normal",
                    "binding:vif_details": {},
                    "binding:profile": {},
                    "allowed_address_pairs": [],
                    "extra_dhcp_opts": [],
                    "security_groups": [],
                    "port_security_enabled": True,
                    "ip_allocation": "immediate",
                    "dns_name": "",
                    "dns_assignment": [],
                    "propagate_uplink_status": False,
                    "qos_policy_id": None,
                    "qos_network_policy_id": None,
                }
            )
        elif isinstance(obj, Network):
            doc.update(
                {
                    "admin_state_up": obj.admin_state_up,
                    "shared": obj.shared,
                    "subnets": [subnet_of(obj.id)],
                    "mtu": 1450,
                    "router:external": False,
                    "availability_zone_hints": [],
                    "availability_zones": ["nova"],
                    "port_security_enabled": True,
                    "ipv4_address_scope": None,
                    "ipv6_address_scope": None,
                    "qos_policy_id": None,
                    "is_default": False,
                }
            )
        elif isinstance(obj, Router):
            doc.update(
                {
                    "admin_state_up": obj.admin_state_up,
                    "external_gateway_info": {
                        "network_id": obj.external_network_id,
                        "enable_snat": True,
                        "external_fixed_ips": [],
                    },
                    "routes": [],
                    "distributed": False,
                    "ha": False,
                    "availability_zone_hints": [],
                    "availability_zones": ["nova"],
                    "flavor_id": None,
                }
            )
        elif isinstance(obj, FloatingIP):
            doc.update(
                {
                    "floating_ip_address": obj.floating_ip_address,
                    "floating_network_id": obj.floating_network_id,
                    "fixed_ip_address": obj.fixed_ip_address,
                    "port_id": obj.port_id,
                    "router_id": obj.router_id,
                    "port_forwardings": [],
                    "dns_domain": "",
                    "dns_name": "",
                    "qos_policy_id": None,
                }
            )
            del doc["name"]
        return doc
