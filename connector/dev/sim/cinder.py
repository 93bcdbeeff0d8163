"""Cinder (block storage v3) for a simulated site: version documents and volume listing.

Listing follows cinder-api 29.0.0 as tried against it (tests/integration/test_real_cinder.py
compares the two): newest first, pages of at most 1000 with a `volumes_links` next link,
`all_tenants` for other projects, deleted volumes gone from lists, an unknown marker a 404, a
query key the list does not know an empty list. `updated_at` stays null until a volume's first
update, and the time filters `updated_at=` / `created_at=<op>:<time>` (gt, gte, lt, lte, eq;
a null time never matches) are honoured from microversion 3.31; below it they are ignored
without an error, as Cinder does. `GET /volumes/summary` (3.12 and later; below, "summary" is
taken for a volume id and answers 404) gives the count and total size of the volumes a listing
would show, with `all_tenants` for every project.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from connector.dev.sim.api import (
    ApiError,
    Request,
    Response,
    compute_fault,
    json_response,
    microversion,
    next_link,
)
from connector.dev.sim.keystone import Keystone
from connector.dev.sim.model import VOLUME, SimObject, Volume, iso_micro, parse_time
from connector.dev.sim.nova import truthy
from connector.dev.sim.store import Site, TimeRange

MIN_VERSION = "3.0"
MAX_VERSION = "3.71"
MAX_LIMIT = 1000
#: The first microversion whose volume list honours the created_at/updated_at filters: 3.60
#: in the API reference, 3.31 (generic filtering) in cinder-api 29.0.0 as tried.
TIME_FILTER_VERSION = (3, 31)
#: Query keys the volume list knows; any other is taken as a column filter that no volume
#: matches, and the list is empty (as cinder-api 29.0.0 answers, with a 200).
LIST_KEYS = frozenset(
    {
        "all_tenants",
        "project_id",
        "limit",
        "marker",
        "offset",
        "sort",
        "sort_key",
        "sort_dir",
        "with_count",
        "status",
        "name",
        "created_at",
        "updated_at",
    }
)
#: `GET /volumes/summary` exists from 3.12 (below it, "summary" is a volume id: 404); its
#: answer gains `metadata` at 3.36.
SUMMARY_VERSION = (3, 12)
SUMMARY_METADATA_VERSION = (3, 36)
#: Fields a volume gains at a microversion, with their value on a volume that no volume service
#: has handled (cinder-api 29.0.0 without a scheduler or volume service shows exactly these).
VERSIONED_FIELDS: tuple[tuple[tuple[int, int], dict[str, Any]], ...] = (
    ((3, 13), {"group_id": None}),
    ((3, 21), {"provider_id": None}),
    ((3, 48), {"service_uuid": None, "shared_targets": True}),
    ((3, 63), {"cluster_name": None, "volume_type_id": "b5c1b1e4-3e6d-4b8a-9a55-0d7c2f36c1a9"}),
    ((3, 65), {"consumes_quota": True}),
)
#: What `sort=<key>[:<dir>]` may name, and how to order by it; Cinder then orders by
#: created_at and id in the first key's direction (its default sort is `created_at:desc,id:desc`).
SORT_KEYS: dict[str, Callable[[SimObject], Any]] = {
    "id": lambda obj: obj.id,
    "name": lambda obj: obj.name,
    "status": lambda obj: obj.status,
    "size": lambda obj: obj.size if isinstance(obj, Volume) else 0,
    "created_at": lambda obj: obj.created,
    # a null `updated_at` comes first in ascending order, as SQL puts NULLs
    "updated_at": lambda obj: (not never_updated(obj), obj.updated),
}


def never_updated(obj: SimObject) -> bool:
    """Cinder leaves `updated_at` null until a volume's first update (the seeded population
    was updated since it was created; a volume created through the API was not)."""
    return obj.updated == obj.created


class Cinder:
    """Serves the paths under `/volume`."""

    def __init__(self, site: Site, keystone: Keystone, base_url: str) -> None:
        self.site = site
        self.keystone = keystone
        self.base_url = base_url

    def _versions(self) -> dict[str, Any]:
        return {
            "versions": [
                {
                    "id": "v3.0",
                    "status": "CURRENT",
                    "version": MAX_VERSION,
                    "min_version": MIN_VERSION,
                    "updated": "2023-08-31T00:00:00Z",
                    "links": [
                        {
                            "href": "https://docs.openstack.org/",
                            "rel": "describedby",
                            "type": "text/html",
                        },
                        {"href": f"{self.base_url}/volume/v3/", "rel": "self"},
                    ],
                    "media-types": [
                        {
                            "base": "application/json",
                            "type": "application/vnd.openstack.volume+json;version=3",
                        }
                    ],
                }
            ]
        }

    def handle(self, request: Request, rest: str) -> Response:
        path = rest.rstrip("/")
        if request.method == "GET" and path == "":
            return json_response(300, self._versions())
        if request.method == "GET" and path == "/v3":
            return json_response(200, self._versions())
        token = self.keystone.check(request)
        version = microversion(request, "volume", None, MIN_VERSION, MAX_VERSION, compute_fault)
        headers = {
            "OpenStack-API-Version": f"volume {version[0]}.{version[1]}",
            "Vary": "OpenStack-API-Version",
        }
        match = re.fullmatch(r"/v3/([^/]+)/volumes(?:/([^/]+))?", path)
        if match is None:
            raise ApiError(404, compute_fault(404, "The resource could not be found."), headers)
        if request.method != "GET":
            raise ApiError(405, compute_fault(405, "The method is not allowed."), headers)
        project_id, which = match.groups()
        try:
            if which == "summary" and version >= SUMMARY_VERSION:
                doc = self._summary(request, project_id, token.project_id, version)
            elif which is None or which == "detail":
                doc = self._list(request, project_id, token.project_id, version, which == "detail")
            elif which == "summary":  # a versioned route: below 3.12 none matches
                raise ApiError(404, compute_fault(404, "The resource could not be found."))
            else:
                doc = self._show(project_id, which, version)
        except ApiError as exc:
            exc.headers.update(headers)
            raise
        return json_response(200, doc, headers)

    def _show(self, project_id: str, volume_id: str, version: tuple[int, int]) -> dict[str, Any]:
        with self.site.lock:
            obj = self.site.tables[VOLUME].by_id.get(volume_id)
            if not isinstance(obj, Volume):
                raise ApiError(404, compute_fault(404, f"Volume {volume_id} could not be found."))
            return {
                "volume": self.site.spoil(
                    VOLUME, obj.id, self.render(obj, project_id, version), "updated_at"
                )
            }

    def _list(
        self,
        request: Request,
        path_project: str,
        token_project: str | None,
        version: tuple[int, int],
        detail: bool,
    ) -> dict[str, Any]:
        arg = request.arg
        owner = arg("project_id") if all_tenants(request) else (token_project or path_project)
        time_filters = version >= TIME_FILTER_VERSION
        span = self._span(arg("updated_at")) if time_filters else None
        created = self._span(arg("created_at")) if time_filters else None
        status = arg("status")
        name = arg("name")
        limit = cinder_limit(request)
        order = sort_order(request)

        def wanted(obj: SimObject) -> bool:
            return (
                (owner is None or obj.project_id == owner)
                and (status is None or obj.status == status)
                and (name is None or obj.name == name)
                # SQL's comparison with a null `updated_at` is never true
                and (span is None or not never_updated(obj))
                and (created is None or created.holds(obj.created))
            )

        with self.site.lock:
            table = self.site.tables[VOLUME]
            after = marker_obj = None
            marker = arg("marker")
            if marker is not None:
                marker_obj = table.by_id.get(marker)
                if marker_obj is None:
                    raise ApiError(404, compute_fault(404, f"Volume {marker} could not be found."))
                after = marker_obj.key
            unknown = set(request.query) - LIST_KEYS
            if unknown:
                page = []
            elif order is None:
                page = table.scan(after=after, span=span, match=wanted, limit=limit)
            else:
                page = sorted_page(
                    table.scan(after=None, span=span, match=wanted, limit=None), order, marker_obj
                )[:limit]
            volumes = [
                self.site.spoil(
                    VOLUME, obj.id, self.render(obj, path_project, version), "updated_at"
                )
                if detail
                else self._brief(obj, path_project)
                for obj in page
                if isinstance(obj, Volume)
            ]
        doc: dict[str, Any] = {"volumes": volumes}
        if limit and len(volumes) == limit:
            path = f"/volume/v3/{path_project}/volumes" + ("/detail" if detail else "")
            doc["volumes_links"] = [
                {"rel": "next", "href": next_link(request, path, limit, page[-1].id)}
            ]
        return doc

    def _summary(
        self,
        request: Request,
        path_project: str,
        token_project: str | None,
        version: tuple[int, int],
    ) -> dict[str, Any]:
        """Count and size of the volumes a listing would show: every project's with
        `all_tenants` (the sim's user is an admin), else the token's. Cinder ignores the
        listing filters here."""
        owner = None if all_tenants(request) else (token_project or path_project)
        with self.site.lock:
            listed = self.site.tables[VOLUME].scan(
                after=None,
                span=None,
                match=lambda obj: owner is None or obj.project_id == owner,
                limit=None,
            )
            sizes = [obj.size for obj in listed if isinstance(obj, Volume)]
        summary: dict[str, Any] = {"total_size": sum(sizes), "total_count": len(sizes)}
        if version >= SUMMARY_METADATA_VERSION:
            summary["metadata"] = {}
        return {"volume-summary": summary}

    def _span(self, raw: str | None) -> TimeRange | None:
        if raw is None:
            return None
        op, sep, value = raw.partition(":")
        if not sep or op not in ("gt", "gte", "lt", "lte", "eq"):
            raise ApiError(400, compute_fault(400, f"Invalid {op} operator"))
        try:
            at = parse_time(value)
        except ValueError as exc:
            raise ApiError(400, compute_fault(400, f"Invalid {value} value")) from exc
        return {
            "gt": TimeRange(lo=at, lo_inclusive=False),
            "gte": TimeRange(lo=at),
            "lt": TimeRange(hi=at, hi_inclusive=False),
            "lte": TimeRange(hi=at),
            "eq": TimeRange(lo=at, hi=at),
        }[op]

    def _links(self, project_id: str, volume_id: str) -> list[dict[str, str]]:
        return [
            {"rel": "self", "href": f"{self.base_url}/volume/v3/{project_id}/volumes/{volume_id}"},
            {"rel": "bookmark", "href": f"{self.base_url}/volume/{project_id}/volumes/{volume_id}"},
        ]

    def _brief(self, obj: Volume, project_id: str) -> dict[str, Any]:
        return {"id": obj.id, "name": obj.name, "links": self._links(project_id, obj.id)}

    def render(self, obj: Volume, project_id: str, version: tuple[int, int]) -> dict[str, Any]:
        """A volume as `GET /volumes/detail` shows it at `version`; call with the lock held."""
        doc: dict[str, Any] = {
            "id": obj.id,
            "name": obj.name,
            "status": obj.status,
            "attachments": [
                {
                    "id": obj.id,
                    "attachment_id": f"{obj.id[:24]}{server_id[24:]}",
                    "volume_id": obj.id,
                    "server_id": server_id,
                    "host_name": None,
                    "device": "/dev/vdb",
                    "attached_at": iso_micro(obj.updated),
                }
                for server_id in obj.attachments
            ],
            "availability_zone": "nova",
            "bootable": "false",
            "consistencygroup_id": None,
            "created_at": iso_micro(obj.created),
            "updated_at": None if never_updated(obj) else iso_micro(obj.updated),
            "description": None,
            "encrypted": False,
            "links": self._links(project_id, obj.id),
            "metadata": {},
            "migration_status": None,
            "multiattach": False,
            "os-vol-host-attr:host": obj.host or None,
            "os-vol-mig-status-attr:migstat": None,
            "os-vol-mig-status-attr:name_id": None,
            "os-vol-tenant-attr:tenant_id": obj.project_id,
            "replication_status": None,
            "size": obj.size,
            "snapshot_id": None,
            "source_volid": None,
            "user_id": self.site.user_id,
            "volume_type": "__DEFAULT__",
        }
        for since, fields in VERSIONED_FIELDS:
            if version >= since:
                doc.update(fields)
        return doc


def all_tenants(request: Request) -> bool:
    """`all_tenants`, a strict boolean; 400 with Cinder's words when it is none."""
    raw = request.arg("all_tenants")
    try:
        return raw is not None and truthy(raw, "all_tenants", compute_fault)
    except ApiError:
        why = f"Value '{raw}' for 'all_tenants' is not a boolean."
        raise ApiError(400, compute_fault(400, why)) from None


def cinder_limit(request: Request) -> int:
    """`limit`, capped at MAX_LIMIT; 400 with Cinder's words when it is not a natural number."""
    raw = request.arg("limit")
    if raw is None:
        return MAX_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, compute_fault(400, "limit param must be an integer")) from None
    if limit < 0:
        raise ApiError(400, compute_fault(400, "limit param must be positive"))
    return min(limit, MAX_LIMIT)


def sort_order(request: Request) -> list[tuple[str, bool]] | None:
    """(key, descending) pairs from `sort=k[:dir],...` or `sort_key`/`sort_dir`, completed with
    created_at and id as Cinder completes them; None for the default order (newest first)."""
    sort, sort_key = request.arg("sort"), request.arg("sort_key")
    if sort is not None:
        pairs = [part.partition(":")[::2] for part in sort.split(",")]
    elif sort_key is not None:
        pairs = [(sort_key, request.arg("sort_dir") or "")]
    else:
        return None
    order: list[tuple[str, bool]] = []
    for key, direction in pairs:
        if key.strip() not in SORT_KEYS:
            raise ApiError(400, compute_fault(400, "Invalid input received: Invalid sort key"))
        if direction not in ("", "asc", "desc"):
            why = "Invalid input received: Unknown sort direction"
            raise ApiError(400, compute_fault(400, why))
        order.append((key.strip(), direction != "asc"))
    first = order[0][1]
    order += [(key, first) for key in ("created_at", "id") if key not in dict(order)]
    return order


def sorted_page(
    objects: list[SimObject], order: list[tuple[str, bool]], marker: SimObject | None
) -> list[SimObject]:
    """`objects` in `order`, those after `marker` when one is given."""
    for key, descending in reversed(order):  # stable sorts, least significant key first
        objects.sort(key=SORT_KEYS[key], reverse=descending)
    return objects[objects.index(marker) + 1 :] if marker in objects else objects
