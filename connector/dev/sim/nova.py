"""Nova (compute v2.1) for a simulated site: version documents and server listing.

Listing follows Nova: newest first, pages of at most 1000 with a `servers_links` next link,
`all_tenants` for other projects, `changes-since` inclusive and returning soft-deleted servers
as DELETED, `changes-before` from microversion 2.66, an unknown marker answered with 400.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from connector.dev.sim.api import (
    ApiError,
    Request,
    Response,
    compute_fault,
    json_response,
    microversion,
    next_link,
    parse_limit,
)
from connector.dev.sim.keystone import Keystone
from connector.dev.sim.model import (
    PORT,
    SERVER,
    Port,
    Server,
    SimObject,
    iso_micro,
    iso_z,
    parse_time,
)
from connector.dev.sim.store import Site, TimeRange

MIN_VERSION = "2.1"
MAX_VERSION = "2.100"
MAX_LIMIT = 1000
IMAGE_ID = "70a599e0-31e7-49b7-b260-868f441e862b"

_TRUE = {"", "1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


def truthy(value: str, name: str, fault: Callable[[int, str], Any]) -> bool:
    """oslo's strict bool_from_string, as Nova and Cinder read `all_tenants`."""
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ApiError(400, fault(400, f"Invalid value '{value}' for {name}"))


@lru_cache(maxsize=65536)
def host_id(project_id: str, host: str) -> str:
    """Nova's hostId: a hash of project and host, so projects cannot map the cloud."""
    return hashlib.sha224((project_id + host).encode()).hexdigest()


class Nova:
    """Serves the paths under `/compute`."""

    def __init__(self, site: Site, keystone: Keystone, base_url: str) -> None:
        self.site = site
        self.keystone = keystone
        self.endpoint = f"{base_url}/compute/v2.1"

    def _version(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": MAX_VERSION,
            "min_version": MIN_VERSION,
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"href": f"{self.endpoint}/", "rel": "self"}],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.compute+json;version=2.1",
                }
            ],
        }

    def handle(self, request: Request, rest: str) -> Response:
        path = rest.rstrip("/")
        if request.method == "GET" and path == "":
            return json_response(200, {"versions": [self._version()]})
        if request.method == "GET" and path == "/v2.1":
            return json_response(200, {"version": self._version()})
        token = self.keystone.check(request)
        version = microversion(
            request,
            "compute",
            "x-openstack-nova-api-version",
            MIN_VERSION,
            MAX_VERSION,
            compute_fault,
        )
        shown = f"{version[0]}.{version[1]}"
        headers = {
            "OpenStack-API-Version": f"compute {shown}",
            "X-OpenStack-Nova-API-Version": shown,
            "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
        }
        if request.method != "GET":
            raise ApiError(405, compute_fault(405, "The method is not allowed."), headers)
        match = re.fullmatch(r"/v2\.1/servers(?:/([^/]+))?", path)
        if match is None:
            raise ApiError(404, compute_fault(404, "The resource could not be found."), headers)
        which = match.group(1)
        try:
            if which is None or which == "detail":
                doc = self._list(request, token.project_id, version, detail=which == "detail")
            else:
                doc = self._show(which, version)
        except ApiError as exc:
            exc.headers.update(headers)
            raise
        return json_response(200, doc, headers)

    def _show(self, server_id: str, version: tuple[int, int]) -> dict[str, Any]:
        with self.site.lock:
            obj = self.site.tables[SERVER].by_id.get(server_id)
            if not isinstance(obj, Server) or obj.deleted:
                raise ApiError(404, compute_fault(404, f"Instance {server_id} could not be found."))
            doc = self.render(obj, version)
            if version >= (2, 71):  # shown by GET /servers/{id} alone
                doc["server_groups"] = []
            return {"server": self.site.spoil(SERVER, obj.id, doc, "updated")}

    def _list(
        self, request: Request, project_id: str | None, version: tuple[int, int], *, detail: bool
    ) -> dict[str, Any]:
        arg = request.arg
        all_tenants = arg("all_tenants") is not None and truthy(
            arg("all_tenants") or "", "all_tenants", compute_fault
        )
        owner = arg("project_id") or arg("tenant_id") if all_tenants else project_id
        since = self._time(request, "changes-since")
        before = self._time(request, "changes-before") if version >= (2, 66) else None
        if since is not None and before is not None and since > before:
            raise ApiError(
                400,
                compute_fault(
                    400, "The value of changes-since must be less than or equal to changes-before."
                ),
            )
        span = None if since is None and before is None else TimeRange(lo=since, hi=before)
        deleted_arg = arg("deleted")
        only_deleted = deleted_arg is not None and truthy(deleted_arg, "deleted", compute_fault)
        status = (arg("status") or "").upper() or None
        name = re.compile(arg("name") or "") if arg("name") else None
        limit = parse_limit(request, compute_fault, MAX_LIMIT)
        assert limit is not None

        def wanted(obj: SimObject) -> bool:
            assert isinstance(obj, Server)
            if obj.deleted and not (span is not None or only_deleted):
                return False
            if only_deleted and not obj.deleted:
                return False
            return (
                (owner is None or obj.project_id == owner)
                and (status is None or obj.status == status)
                and (name is None or name.search(obj.name) is not None)
            )

        with self.site.lock:
            table = self.site.tables[SERVER]
            after = None
            marker = arg("marker")
            if marker is not None:
                marker_obj = table.by_id.get(marker)
                if marker_obj is None:
                    raise ApiError(400, compute_fault(400, f"marker [{marker}] not found"))
                after = marker_obj.key
            page = table.scan(after=after, span=span, match=wanted, limit=limit)
            servers = [
                self.site.spoil(SERVER, obj.id, self.render(obj, version), "updated")
                if detail
                else self._brief(obj)
                for obj in page
                if isinstance(obj, Server)
            ]
        doc: dict[str, Any] = {"servers": servers}
        if limit and len(servers) == limit:
            path = "/compute/v2.1/servers/detail" if detail else "/compute/v2.1/servers"
            doc["servers_links"] = [
                {"rel": "next", "href": next_link(request, path, limit, page[-1].id)}
            ]
        return doc

    def _time(self, request: Request, name: str) -> float | None:
        raw = request.arg(name)
        if raw is None:
            return None
        try:
            return parse_time(raw)
        except ValueError as exc:
            raise ApiError(
                400,
                compute_fault(
                    400,
                    f"Invalid input for query parameters {name}. "
                    f"Value: {raw}. '{raw}' is not a 'date-time'",
                ),
            ) from exc

    def _links(self, server_id: str) -> list[dict[str, str]]:
        return [
            {"rel": "self", "href": f"{self.endpoint}/servers/{server_id}"},
            {
                "rel": "bookmark",
                "href": f"{self.endpoint.removesuffix('/v2.1')}/servers/{server_id}",
            },
        ]

    def _brief(self, obj: Server) -> dict[str, Any]:
        return {"id": obj.id, "name": obj.name, "links": self._links(obj.id)}

    def render(self, obj: Server, version: tuple[int, int]) -> dict[str, Any]:
        """A server as `GET /servers/detail` shows it at `version`; call with the lock held."""
        ports = self.site.tables[PORT].by_id
        addresses: dict[str, list[dict[str, Any]]] = {}
        for port_id in obj.port_ids:
            port = ports.get(port_id)
            if isinstance(port, Port):
                addresses.setdefault("private", []).append(
                    {
                        "addr": port.ip_address,
                        "version": 4,
                        "OS-EXT-IPS:type": "fixed",
                        "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                    }
                )
        if version >= (2, 47):
            flavor: dict[str, Any] = {
                "vcpus": 1,
                "ram": 512,
                "disk": 1,
                "ephemeral": 0,
                "swap": 0,
                "original_name": "m1.tiny",
                "extra_specs": {},
            }
        else:
            flavor = {
                "id": "1",
                "links": [{"rel": "bookmark", "href": f"{self.endpoint}/flavors/1"}],
            }
        attached: list[dict[str, Any]] = [
            {"id": v, "delete_on_termination": False} if version >= (2, 3) else {"id": v}
            for v in obj.volume_ids
        ]
        doc: dict[str, Any] = {
            "id": obj.id,
            "name": obj.name,
            "status": obj.status,
            "tenant_id": obj.project_id,
            "user_id": self.site.user_id,
            "metadata": {},
            "hostId": host_id(obj.project_id, obj.host),
            "image": {
                "id": IMAGE_ID,
                "links": [{"rel": "bookmark", "href": f"{self.endpoint}/images/{IMAGE_ID}"}],
            },
            "flavor": flavor,
            "created": iso_z(obj.created),
            "updated": iso_z(obj.updated),
            "addresses": addresses,
            "accessIPv4": "",
            "accessIPv6": "",
            "links": self._links(obj.id),
            "OS-DCF:diskConfig": "MANUAL",
            "progress": 0,
            "OS-EXT-AZ:availability_zone": "nova",
            "config_drive": "",
            "key_name": None,
            "OS-SRV-USG:launched_at": None if obj.status == "BUILD" else iso_micro(obj.created),
            "OS-SRV-USG:terminated_at": iso_micro(obj.updated) if obj.deleted else None,
            "OS-EXT-SRV-ATTR:host": obj.host,
            "OS-EXT-SRV-ATTR:hypervisor_hostname": obj.host,
            "OS-EXT-SRV-ATTR:instance_name": f"instance-{obj.serial:08x}",
            "OS-EXT-STS:task_state": obj.task_state,
            "OS-EXT-STS:vm_state": obj.vm_state,
            "OS-EXT-STS:power_state": obj.power_state,
            "os-extended-volumes:volumes_attached": attached,
            "security_groups": [{"name": "default"}],
        }
        if version >= (2, 3):  # the extended server attributes an admin sees
            doc |= {
                "OS-EXT-SRV-ATTR:hostname": obj.name,
                "OS-EXT-SRV-ATTR:kernel_id": "",
                "OS-EXT-SRV-ATTR:launch_index": 0,
                "OS-EXT-SRV-ATTR:ramdisk_id": "",
                "OS-EXT-SRV-ATTR:reservation_id": f"r-{obj.serial:08x}",
                "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                "OS-EXT-SRV-ATTR:user_data": None,
            }
        if version >= (2, 9):
            doc["locked"] = False
        if version >= (2, 16):  # to an admin, as its policy allows
            doc["host_status"] = "UP"
        if version >= (2, 19):
            doc["description"] = None
        if version >= (2, 26):
            doc["tags"] = []
        if version >= (2, 63):
            doc["trusted_image_certificates"] = None
        if version >= (2, 73):
            doc["locked_reason"] = None
        if version >= (2, 98):
            doc["image"]["properties"] = {}
        if version >= (2, 96):
            doc["pinned_availability_zone"] = None
        if version >= (2, 100):
            doc["scheduler_hints"] = {}
        return doc
