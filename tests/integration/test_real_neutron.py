"""The poller and the sim against a real neutron-server 29.0.0 (`real_network`, beside the
session's real Keystone 30.0.0). A poller of kind `port` and a consumer run while ports are
made, renamed, disabled and deleted through Neutron's API: the top equals Neutron's listing
after each step, deletions within two poll intervals (this Neutron validates filters, so
`changed_since` is refused and the poller's revision diff is what runs). The conformance test
sends the same requests to the sim's Neutron and to the real one and compares the answers
(docs/sim.md lists what it reaches and the differences left)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openstack
import sqlalchemy as sa

from connector.dev.sim import start_sim
from connector.dev.sim.model import Network, Port, Router, SimObject
from connector.sinks.sql import create_engine
from connector.site.kinds import KINDS
from tests.support import wait_for
from tests.support.churn import Churn, top_equals
from tests.support.conformance import differences, links_parsed, masked_times
from tests.support.openstack import RealNetwork

#: The poll interval, seconds.
INTERVAL = 2.0


def admin_state(db: Path, port_ids: list[str]) -> set[object]:
    """The `admin_state_up` details the top holds for `port_ids` (None: no row yet)."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT id, details FROM resource_status WHERE kind = 'port'")
            details = {row[0]: json.loads(row[1]) for row in conn.execute(query)}
    finally:
        engine.dispose()
    return {details.get(i, {}).get("admin_state_up") for i in port_ids}


def test_port_churn_reaches_the_top_and_deletions_within_two_poll_intervals(
    real_network: RealNetwork,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    cloud = real_network.cloud
    cloud.write_cloud(clouds_yaml, "ports", cloud.account().auth(cloud.auth_url))
    member = cloud.connect(cloud.account(role="member").auth(cloud.auth_url))
    ports = real_network.create_ports(15, "admin") + real_network.create_ports(5, "member", member)
    db = tmp_path / "top.sqlite"
    figures: list[str] = []

    def step(name: str, act: Callable[[], object], also: Callable[[], bool] | None = None) -> float:
        act()
        started = time.monotonic()
        top_equals(real_network.listed, db, name)
        if also is not None:
            wait_for(also, 30, f"the details at the top after {name}")
        took = time.monotonic() - started
        figures.append(f"{name:<14} converged in {took:4.1f} s")
        return took

    def rename() -> None:
        for port in ports[:5]:
            real_network.update(port, name=f"{port[:8]}-renamed")

    def disable() -> None:
        for port in ports[5:10]:
            real_network.update(port, admin_state_up=False)

    def delete() -> None:
        for port in ports[10:18]:
            real_network.delete(port)

    with Churn(kafka_bootstrap, "ports", unique_name, db, kind="port", interval=INTERVAL):
        step("first sync", lambda: None)
        step("renames", rename)
        step("disabled", disable, lambda: admin_state(db, ports[5:10]) == {False})
        deletions = step("deletions", delete)
        step("creations", lambda: real_network.create_ports(3, "late"))
    print(f"\nport churn against neutron-server 29.0.0, poll interval {INTERVAL} s:")
    print("\n".join(figures))
    # two polls, and 5 s for Kafka and the consumer on the loaded machine (1 s measured)
    assert deletions < 2 * INTERVAL + 5, f"deletions took {deletions:.1f} s"


#: What the poller asks Neutron for (`connector.site.kinds`): the fields of a full listing of
#: ports, and of the revision diff's cheap one.
PORT_FIELDS = "&".join(f"fields={name}" for name in KINDS["port"].fields())
REVISIONS = "fields=id&fields=revision_number"
NETWORK_FIELDS = "&".join(f"fields={name}" for name in KINDS["network"].fields())
ROUTER_FIELDS = "&".join(f"fields={name}" for name in KINDS["router"].fields())
UNKNOWN = "0c3a5d6e-8b1f-4e55-9a3c-7d2e1f0b9a84"
#: Request paths (`{name}` filled from the side's placeholders), sent to both.
NEUTRON_REQUESTS = [
    f"/v2.0/ports?network_id={{net}}&limit=1000&{PORT_FIELDS}",
    f"/v2.0/ports?network_id={{net}}&limit=1000&{REVISIONS}",
    "/v2.0/ports?network_id={net}&limit=1000&fields=id",
    f"/v2.0/ports/{{a1}}?{PORT_FIELDS}",
    f"/v2.0/networks/{{net}}?{NETWORK_FIELDS}",
    f"/v2.0/routers/{{r0}}?{ROUTER_FIELDS}",
    # what the poller tries first, and bad input
    "/v2.0/ports?network_id={net}&changed_since={t0}",
    "/v2.0/ports?network_id={net}&bogus=1",
    "/v2.0/ports?network_id={net}&limit=abc",
    "/v2.0/ports?network_id={net}&limit=-1",
    f"/v2.0/ports?network_id={{net}}&limit=2&marker={UNKNOWN}",
    f"/v2.0/ports?network_id={{net}}&marker={UNKNOWN}&fields=id",
    f"/v2.0/ports/{UNKNOWN}",
    f"/v2.0/networks/{UNKNOWN}",
    f"/v2.0/routers/{UNKNOWN}",
    f"/v2.0/floatingips/{UNKNOWN}",
]
#: The paged listing: followed by its next links to the end.
NEUTRON_PAGED = "/v2.0/ports?network_id={net}&limit=2&fields=id&fields=name"
#: The fields of a full port that only one side has (docs/sim.md): the sim renders the
#: extensions of a typical ML2/OVS deployment, this neutron-server has ML2 with no extension
#: drivers.
SIM_ONLY_PORT_FIELDS = {
    "dns_assignment",
    "dns_name",
    "ip_allocation",
    "port_security_enabled",
    "propagate_uplink_status",
    "qos_network_policy_id",
    "qos_policy_id",
}
REAL_ONLY_PORT_FIELDS: set[str] = set()


class NeutronSide:
    """One Neutron, the admin's connection to it and what its project ids stand for; the
    ports and networks have the same ids on both sides (the real side's, given to the sim)."""

    def __init__(self, conn: Any, root: str, projects: dict[str, str]) -> None:
        self.conn = conn
        self.root = root
        self.projects = projects
        self.values: dict[str, str] = {}

    def get(self, path: str) -> Any:
        return self.conn.network.get(self.root + path.format(**self.values))

    def answer(self, path: str) -> tuple[dict[str, Any], Any]:
        """The answer normalised (URLs, project ids and times replaced by what they stand
        for; only `next` links kept: real pages also link to the previous one, docs/sim.md),
        and its body as sent."""
        response = self.get(path)
        text = response.text.replace(self.root, "<root>")
        for project_id, role in self.projects.items():
            text = text.replace(project_id, f"<project {role}>")
        body: Any = json.loads(masked_times(text)) if text else None
        if isinstance(body, dict):
            for key in [key for key in body if key.endswith("_links")]:
                body[key] = [link for link in body[key] if link["rel"] == "next"]
                if not body[key]:
                    del body[key]
        normalised = {"status": response.status_code, "body": links_parsed(body)}
        return normalised, response.json() if response.content else None


def neutron_population(make: Callable[..., str], update: Callable[..., None]) -> dict[str, str]:
    """The same network and ports on either side: `make(collection, name, project_role)` makes
    one and returns its id, `update(collection, id, **fields)` changes one. Returns name -> id."""
    ids = {"net": make("networks", "net", "admin"), "r0": make("routers", "r0", "admin")}
    for name, project in (("a0", "admin"), ("a1", "admin"), ("a2", "admin"), ("b0", "b")):
        ids[name] = make("ports", name, project)
    update("ports", ids["a1"], name="a1-renamed")
    update("ports", ids["a2"], admin_state_up=False)
    update("ports", ids["a2"], name="a2-renamed")
    return ids


def test_the_sim_answers_neutron_requests_as_neutron_server_does(
    real_network: RealNetwork,
) -> None:
    cloud = real_network.cloud
    other = cloud.account()
    admin_project = real_network.admin.current_project_id
    real = NeutronSide(
        real_network.admin, real_network.url, {admin_project: "admin", other.project_id: "b"}
    )
    real_projects = {"admin": admin_project, "b": other.project_id}

    def make_real(collection: str, name: str, project: str) -> str:
        body: dict[str, Any] = {"name": name, "project_id": real_projects[project]}
        if collection == "ports":
            body["network_id"] = real.values["net"]
        made = real_network.neutron("post", f"/{collection}", json={collection[:-1]: body})
        object_id: str = made[collection[:-1]]["id"]
        real.values.setdefault(name, object_id)
        return object_id

    def update_real(collection: str, object_id: str, **fields: Any) -> None:
        real_network.neutron("put", f"/{collection}/{object_id}", json={collection[:-1]: fields})

    real.values = neutron_population(make_real, update_real)
    real.values["t0"] = real.get("/v2.0/ports/{a0}").json()["port"]["created_at"]

    with start_sim("neutron", servers=0, volumes=0, ports=0, networks=0, routers=0) as sim:
        site = sim.site
        (admin_id, admin_name), (b_id, _), _ = site.projects
        entry = sim.clouds_yaml_entry()
        conn = openstack.connect(
            auth={**entry["auth"], "project_name": admin_name}, region_name=entry["region_name"]
        )
        sim_side = NeutronSide(conn, f"{sim.url}/networking", {admin_id: "admin", b_id: "b"})
        sim_projects = {"admin": admin_id, "b": b_id}

        def make_sim(collection: str, name: str, project: str) -> str:
            # the real side's id, so that both list in the same order (by id)
            fields: dict[str, Any] = {"id": real.values[name], "name": name}
            cls: type[SimObject]
            if collection == "ports":
                cls = Port
                fields |= {"network_id": real.values["net"], "status": "DOWN"}
            else:
                cls = Network if collection == "networks" else Router
                fields["status"] = "ACTIVE"
            made = site.create(cls, now=site.now(), project_id=sim_projects[project], **fields)
            return made.id

        def update_sim(collection: str, object_id: str, **fields: Any) -> None:
            kind = collection.removesuffix("s")
            site.update(site.tables[kind].by_id[object_id], site.now(), **fields)

        sim_side.values = neutron_population(make_sim, update_sim)
        sim_side.values["t0"] = sim_side.get("/v2.0/ports/{a0}").json()["port"]["created_at"]

        found = []
        for path in NEUTRON_REQUESTS:
            sim_answer, _ = sim_side.answer(path)
            real_answer, real_body = real.answer(path)
            found += [f"GET {path}: {line}" for line in differences(sim_answer, real_answer)]
            if path.startswith("/v2.0/ports?network_id={net}&limit=1000&fields=id&fields=rev"):
                revisions = {p["id"]: p["revision_number"] for p in real_body["ports"]}
        # revision_number: 1 on create, one more per update
        names = {real.values[name]: name for name in ("a0", "a1", "a2", "b0")}
        assert {names[i]: r for i, r in revisions.items()} == {"a0": 1, "a1": 2, "a2": 3, "b0": 1}
        # the paged listing, followed by its next links to the end
        pages: dict[str, list[dict[str, Any]]] = {}
        for name, side in (("sim", sim_side), ("real", real)):
            url: str | None = NEUTRON_PAGED
            pages[name] = []
            while url is not None and len(pages[name]) < 10:
                answer, body = side.answer(url)
                pages[name].append(answer)
                links = [x["href"] for x in body.get("ports_links", []) if x["rel"] == "next"]
                url = links[0].removeprefix(side.root) if links else None
        found += [
            f"page {i} of {NEUTRON_PAGED}: {line}"
            for i, (s, r) in enumerate(zip(pages["sim"], pages["real"], strict=False))
            for line in differences(s, r)
        ]
        assert len(pages["sim"]) == len(pages["real"]), pages
        # the fields of a full port, and their formats where both have them
        sim_port = sim_side.answer("/v2.0/ports/{a0}")[0]["body"]["port"]
        real_port = real.answer("/v2.0/ports/{a0}")[0]["body"]["port"]
        assert sim_port.keys() - real_port.keys() == SIM_ONLY_PORT_FIELDS
        assert real_port.keys() - sim_port.keys() == REAL_ONLY_PORT_FIELDS
        for key in ("created_at", "updated_at", "revision_number", "status", "binding:host_id"):
            found += differences(sim_port[key], real_port[key], f"port {key}")
    assert not found, "\n".join(found)
