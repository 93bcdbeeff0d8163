"""The simulated Cinder held to the real one: the same volumes made in both (a simulated site and
the session's real cinder-api 29.0.0, `real_cloud`), then the same requests sent to both through
openstacksdk, their answers compared after ids, URLs and times are replaced by what they stand
for (a volume's name, a project's role, a time's format). Compared: status codes, the
`OpenStack-API-Version` header, which fields are present and their formats, which objects come
back in which order, next links. They must not differ at all; what these requests do not reach
and still differs is listed in docs/sim.md."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import openstack
import pytest

from connector.dev.sim import RunningSim, start_sim
from connector.dev.sim.model import Volume
from tests.support.conformance import HEX_ID, UUID, differences, links_parsed, masked_times
from tests.support.openstack import RealCloud

#: Request paths (relative to the endpoint, `{name}` filled from the side's own answers) and the
#: microversion each is sent at.
REQUESTS: list[tuple[str, str]] = [
    # every project (the admin's token is scoped to neither), newest first, fields at 3.60
    ("3.60", "/volumes/detail?all_tenants=True&created_at=gte:{t0}"),
    ("3.0", "/volumes/detail?all_tenants=True&project_id={a}"),
    ("3.71", "/volumes/detail?all_tenants=True&project_id={b}"),
    ("3.60", "/volumes?all_tenants=True&project_id={a}"),
    ("3.60", "/volumes/detail"),  # the admin's own project: none of them
    ("3.60", "/volumes/detail?all_tenants=0&project_id={a}"),
    # the time filters: honoured from 3.31 (generic filtering), ignored below
    ("3.60", "/volumes/detail?all_tenants=True&updated_at=gte:{t1}"),
    ("3.31", "/volumes/detail?all_tenants=True&project_id={a}&updated_at=gte:{t1}"),
    ("3.30", "/volumes/detail?all_tenants=True&project_id={a}&updated_at=gte:{t1}"),
    ("3.60", "/volumes/detail?all_tenants=True&created_at=gte:{t2}"),
    ("3.0", "/volumes/detail?all_tenants=True&project_id={b}&created_at=gte:{t2}"),
    # sort order
    ("3.60", "/volumes/detail?all_tenants=True&project_id={a}&sort=name:asc"),
    ("3.60", "/volumes/detail?all_tenants=True&project_id={a}&sort_key=name&sort_dir=asc"),
    # a deleted volume, an unknown marker, a filter the list does not know, bad input
    ("3.60", "/volumes/{a2}"),
    ("3.60", "/volumes/{a1}"),
    ("3.60", "/volumes/detail?all_tenants=True&marker=0c3a5d6e-8b1f-4e55-9a3c-7d2e1f0b9a84"),
    ("3.60", "/volumes/detail?all_tenants=True&project_id={a}&bogus=1"),
    ("3.60", "/volumes/detail?all_tenants=True&updated_at=bad:{t1}"),
    ("3.60", "/volumes/detail?all_tenants=True&updated_at=gte:yesterday"),
    ("3.60", "/volumes/detail?all_tenants=True&limit=abc"),
    ("3.60", "/volumes/detail?all_tenants=True&limit=-1"),
    ("3.60", "/volumes/detail?all_tenants=maybe"),
    ("3.60", "/volumes/detail?all_tenants=True&project_id={a}&sort=bogus:asc"),
]
#: Requests sent with the connection scoped to project a (the summary counts the token's).
OWN_PROJECT_REQUESTS: list[tuple[str, str]] = [
    ("3.12", "/volumes/summary"),
    ("3.36", "/volumes/summary"),
    ("3.11", "/volumes/summary"),
    ("3.60", "/volumes/detail"),
]
#: The paged listing: followed by its next links to the end.
PAGED = "/volumes/detail?all_tenants=True&created_at=gte:{t0}&limit=2"


class Population(Protocol):
    """Where the same volumes are made: a real cinder-api or a simulated site."""

    def create(self, project: str, name: str) -> str: ...
    def rename(self, volume_id: str, name: str) -> None: ...
    def set_status(self, volume_id: str, status: str) -> None: ...
    def delete(self, volume_id: str) -> None: ...


@dataclass
class Side:
    """One service, its admin's connections and what its ids and URLs stand for."""

    name: str
    #: the admin, token scoped to the admin's project
    admin: Any
    #: a connection whose token is scoped to project a
    own: Any
    #: the block-storage endpoint's root, the part of a link before `/v3/`
    root: str
    #: project id -> role in the test ("admin", "a", "b")
    projects: dict[str, str]
    population: Population
    ids: dict[str, str] = field(default_factory=dict)

    def placeholders(self) -> dict[str, Any]:
        by_role = {role: pid for pid, role in self.projects.items()}
        return {
            **by_role,
            **self.ids,
            "t0": self.show(self.ids["a0"])["created_at"],
            "t1": self.show(self.ids["a1"])["updated_at"],
            "t2": self.show(self.ids["b0"])["created_at"],
        }

    def show(self, volume_id: str) -> dict[str, Any]:
        volume: dict[str, Any] = self.admin.block_storage.get(
            f"/volumes/{volume_id}", microversion="3.60"
        ).json()["volume"]
        return volume

    def answer(self, conn: Any, microversion: str, path: str) -> tuple[dict[str, Any], Any]:
        """The answer normalised (ids, URLs and times replaced by what they stand for), and its
        body as sent."""
        response = conn.block_storage.get(path, microversion=microversion)
        text = response.text.replace(self.root, "<root>")
        for volume_name, volume_id in self.ids.items():
            text = text.replace(volume_id, f"<volume {volume_name}>")
        for project_id, role in self.projects.items():
            text = text.replace(project_id, f"<project {role}>")
        text = UUID.sub("<uuid>", masked_times(text))
        text = HEX_ID.sub("<hex id>", text)
        normalised = {
            "status": response.status_code,
            "OpenStack-API-Version": response.headers.get("OpenStack-API-Version"),
            "body": links_parsed(json.loads(text) if text else None),
        }
        return normalised, response.json() if response.content else None


class RealPopulation:
    def __init__(self, cloud: RealCloud, conns: dict[str, Any]) -> None:
        self.cloud = cloud
        self.conns = conns

    def create(self, project: str, name: str) -> str:
        volume = {"volume": {"size": 1, "name": name}}
        made = self.cloud.cinder("post", "/volumes", self.conns[project], json=volume)
        volume_id: str = made["volume"]["id"]
        return volume_id

    def rename(self, volume_id: str, name: str) -> None:
        self.cloud.update(volume_id, name=name)

    def set_status(self, volume_id: str, status: str) -> None:
        self.cloud.reset_status(volume_id, status)

    def delete(self, volume_id: str) -> None:
        self.cloud.reset_status(volume_id, "available")
        self.cloud.delete(volume_id)


class SimPopulation:
    def __init__(self, sim: RunningSim, projects: dict[str, str]) -> None:
        self.site = sim.site
        self.projects = projects

    def create(self, project: str, name: str) -> str:
        site = self.site
        volume = site.create(
            Volume, now=site.now(), name=name, project_id=self.projects[project], status="creating"
        )
        return volume.id

    def _volume(self, volume_id: str) -> Volume:
        volume = self.site.tables["volume"].by_id[volume_id]
        assert isinstance(volume, Volume)
        return volume

    def rename(self, volume_id: str, name: str) -> None:
        self.site.update(self._volume(volume_id), self.site.now(), name=name)

    def set_status(self, volume_id: str, status: str) -> None:
        self.site.update(self._volume(volume_id), self.site.now(), status=status)

    def delete(self, volume_id: str) -> None:
        self.set_status(volume_id, "available")
        self.site.delete(self._volume(volume_id), self.site.now())


def populate(side: Side) -> None:
    """The same volumes and changes on either side: created, renamed, reset, deleted."""
    made = side.population
    for project, names in (("a", ("a0", "a1", "a2", "a3")), ("b", ("b0", "b1", "b2"))):
        for name in names:
            side.ids[name] = made.create(project, name)
    made.rename(side.ids["a1"], "a1-renamed")
    made.set_status(side.ids["b0"], "available")
    made.delete(side.ids["a2"])


@pytest.fixture
def real_side(real_cloud: RealCloud) -> Side:
    # admins, as the sim's only user is: they see the admin's fields of a volume
    accounts = {role: real_cloud.account() for role in ("a", "b")}
    conns = {
        role: real_cloud.connect(account.auth(real_cloud.auth_url))
        for role, account in accounts.items()
    }
    admin_project = real_cloud.admin.current_project_id
    side = Side(
        name="cinder",
        admin=real_cloud.admin,
        own=conns["a"],
        root=real_cloud.services.endpoints.cinder_url,
        projects={admin_project: "admin"}
        | {account.project_id: role for role, account in accounts.items()},
        population=RealPopulation(real_cloud, conns),
    )
    populate(side)
    return side


@pytest.fixture
def sim_side() -> Iterator[Side]:
    with start_sim("conformance", servers=0, volumes=0, ports=0) as sim:
        entry = sim.clouds_yaml_entry()
        (admin, _), (a, _), (b, _) = sim.site.projects

        def connect(project: str) -> Any:
            auth = {**entry["auth"], "project_name": project}
            return openstack.connect(auth=auth, region_name=entry["region_name"])

        projects = {admin: "admin", a: "a", b: "b"}
        side = Side(
            name="sim",
            admin=connect(sim.site.projects[0][1]),
            own=connect(sim.site.projects[1][1]),
            root=f"{sim.url}/volume",
            projects=projects,
            population=SimPopulation(sim, {"a": a, "b": b}),
        )
        populate(side)
        yield side


def compare(
    sim: Side, real: Side, requests: list[tuple[str, str]], conn: Callable[[Side], Any]
) -> list[str]:
    found = []
    sim_values, real_values = sim.placeholders(), real.placeholders()
    for microversion, path in requests:
        sim_answer, _ = sim.answer(conn(sim), microversion, path.format(**sim_values))
        real_answer, _ = real.answer(conn(real), microversion, path.format(**real_values))
        found += [
            f"GET {path} at {microversion}: {line}" for line in differences(sim_answer, real_answer)
        ]
    return found


def test_the_sim_answers_volume_requests_as_cinder_does(real_side: Side, sim_side: Side) -> None:
    found = compare(sim_side, real_side, REQUESTS, lambda side: side.admin)
    found += compare(sim_side, real_side, OWN_PROJECT_REQUESTS, lambda side: side.own)
    # the paged listing, followed by its next links to the end
    pages: dict[str, list[dict[str, Any]]] = {}
    for side in (sim_side, real_side):
        url: str | None = PAGED.format(**side.placeholders())
        pages[side.name] = []
        while url is not None and len(pages[side.name]) < 10:
            answer, body = side.answer(side.admin, "3.60", url)
            pages[side.name].append(answer)
            links = [link["href"] for link in body.get("volumes_links", [])]
            url = links[0] if links else None
    assert len(pages["sim"]) == len(pages["cinder"]) == 4, pages  # 3 full pages, 1 empty
    found += [
        f"page {i} of {PAGED}: {line}"
        for i, (s, r) in enumerate(zip(pages["sim"], pages["cinder"], strict=True))
        for line in differences(s, r)
    ]
    assert not found, "\n".join(found)
