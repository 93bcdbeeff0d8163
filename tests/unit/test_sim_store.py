"""The simulated site's state without HTTP: seeding, paging indexes, changes, churn, storms,
and the service handlers called in-process."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from connector.dev.sim import behaviour
from connector.dev.sim.api import Request
from connector.dev.sim.model import KINDS, PORT, SERVER, VOLUME, Server, Volume
from connector.dev.sim.server import App, default_counts
from connector.dev.sim.store import Site, TimeRange


def _site(seed: int = 3, servers: int = 300, volumes: int = 200, ports: int = 300) -> Site:
    site = Site("unit", seed)
    site.populate(default_counts(servers, volumes, ports), now=1_700_000_000.0)
    return site


def _all(obj: object) -> bool:
    return True


def test_same_seed_gives_the_same_data() -> None:
    a, b, c = _site(seed=5), _site(seed=5), _site(seed=6)
    strip = [{k: v for k, v in o.items() if k != "updated_at"} for o in a.truth()]
    assert strip == [{k: v for k, v in o.items() if k != "updated_at"} for o in b.truth()]
    assert [o["id"] for o in a.truth()] != [o["id"] for o in c.truth()]
    assert a.counts() == {**default_counts(300, 200, 300)}


def test_marker_paging_visits_every_object_once_in_listing_order() -> None:
    site = _site()
    for kind in KINDS:
        table = site.tables[kind]
        seen: list[str] = []
        after = None
        while True:
            page = table.scan(after=after, span=None, match=_all, limit=7)
            if not page:
                break
            seen += [o.id for o in page]
            after = page[-1].key
        assert sorted(seen) == sorted(table.by_id)
        assert len(seen) == len(set(seen))
    # Neutron lists by id; Nova and Cinder newest first.
    ports = [o.id for o in site.tables[PORT].scan(after=None, span=None, match=_all, limit=None)]
    assert ports == sorted(ports)
    servers = site.tables[SERVER].scan(after=None, span=None, match=_all, limit=None)
    assert [s.serial for s in servers] == sorted((s.serial for s in servers), reverse=True)


def test_time_index_follows_updates_and_bounds() -> None:
    site = _site()
    table = site.tables[SERVER]
    now = time.time()
    target = next(iter(site.live(SERVER)))
    assert site.update(target, now, status="SHUTOFF" if target.status != "SHUTOFF" else "ACTIVE")
    assert not site.update(target, now, status=target.status)  # no change, nothing recorded
    since = float(int(now))
    hits = table.scan(after=None, span=TimeRange(lo=since), match=_all, limit=None)
    assert hits == [target]
    assert (
        table.scan(after=None, span=TimeRange(lo=since, lo_inclusive=False), match=_all, limit=None)
        == []
    )
    older = table.scan(
        after=None, span=TimeRange(hi=since, hi_inclusive=False), match=_all, limit=None
    )
    assert target not in older and len(older) == len(table.by_id) - 1
    assert table.changes == sorted(table.changes)


def test_server_deletion_is_soft_and_releases_volumes_and_ports() -> None:
    site = _site()
    server = next(
        s for s in site.live(SERVER) if isinstance(s, Server) and s.volume_ids and s.port_ids
    )
    volumes, ports = server.volume_ids, server.port_ids
    before = site.counters.status_changes
    site.delete(server, time.time())
    assert server.deleted and server.status == "DELETED"
    assert server.id in site.tables[SERVER].by_id  # until archived
    assert server.id not in {o["id"] for o in site.truth([SERVER])}
    for volume_id in volumes:
        volume = site.tables[VOLUME].by_id[volume_id]
        assert isinstance(volume, Volume) and volume.status == "available"
        assert not volume.attachments
    assert not set(ports) & set(site.tables[PORT].by_id)
    assert site.counters.status_changes == before + 1 + len(volumes) + len(ports)
    assert site.archive() == 1 and server.id not in site.tables[SERVER].by_id


def test_churn_changes_statuses_creates_and_deletes() -> None:
    site = _site()
    before = {(o["kind"], o["id"]): o["status"] for o in site.truth()}
    done = behaviour.churn(site, 500)
    assert sum(done.values()) == 500 and done["created"] and done["deleted"]
    after = {(o["kind"], o["id"]): o["status"] for o in site.truth()}
    changed = {k for k in before.keys() & after.keys() if before[k] != after[k]}
    assert len(changed) > 100
    assert len(after.keys() - before.keys()) >= done["created"]
    assert site.counters.status_changes >= 500
    for table in site.tables.values():
        assert table.order == sorted(table.order) and table.changes == sorted(table.changes)


def test_storm_flaps_every_working_object_and_settles() -> None:
    site = _site()
    before = {(o["kind"], o["id"]): o for o in site.truth()}
    plan = behaviour.storm_plan(site, [SERVER, PORT, VOLUME])
    flapping = len(plan[0])
    assert flapping == sum(
        1
        for o in before.values()
        if (o["kind"], o["status"])
        in {(SERVER, "ACTIVE"), (SERVER, "SHUTOFF"), (PORT, "ACTIVE"), (VOLUME, "in-use")}
    )
    behaviour.run_storm(site, plan, flaps=2, seconds=0.0, stop=threading.Event())
    steps = sum(len(step) for step in plan)
    assert site.counters.updates == 2 * steps
    after = {(o["kind"], o["id"]): o for o in site.truth()}
    for key, obj in before.items():
        assert after[key]["status"] == obj["status"]
        if obj["kind"] == VOLUME:
            assert after[key]["attachments"] == obj["attachments"]
    ports_active = [o for o in before.values() if o["kind"] == PORT and o["status"] == "ACTIVE"]
    assert all(
        after[(PORT, p["id"])]["revision_number"] == p["revision_number"] + 6 for p in ports_active
    )


def _app(site: Site, changed_since: str = "reject") -> tuple[App, dict[str, str]]:
    app = App(
        site,
        "http://sim.invalid",
        password="pw",
        token_ttl=60,
        neutron_changed_since="accept" if changed_since == "accept" else "reject",
    )
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "admin", "domain": {"id": "default"}, "password": "pw"}
                },
            },
            "scope": {"project": {"id": site.admin_project_id}},
        }
    }
    answer = app.dispatch(
        Request("POST", "/identity/v3/auth/tokens", {}, {}, json.dumps(body).encode())
    )
    assert answer.status == 201
    return app, {"x-auth-token": answer.headers["X-Subject-Token"]}


def _get(app: App, path: str, headers: dict[str, str], **query: list[str]) -> tuple[int, Any]:
    answer = app.dispatch(Request("GET", path, query, headers))
    return answer.status, json.loads(answer.body)


def test_handlers_in_process_paging_filters_and_errors() -> None:
    site = _site()
    app, auth = _app(site)
    status, doc = _get(app, "/compute/v2.1/servers/detail", auth, all_tenants=["1"], limit=["50"])
    assert status == 200 and len(doc["servers"]) == 50
    assert "marker=" in doc["servers_links"][0]["href"]
    status, doc = _get(app, "/compute/v2.1/servers", auth, **{"changes-since": ["yesterday"]})
    assert status == 400 and "changes-since" in doc["badRequest"]["message"]
    status, doc = _get(app, "/compute/v2.1/servers", auth, marker=["nope"])
    assert status == 400 and "marker [nope] not found" in doc["badRequest"]["message"]
    status, doc = _get(app, "/networking/v2.0/ports", auth, changed_since=["2020-01-01T00:00:00Z"])
    assert status == 400 and doc["NeutronError"]["type"] == "HTTPBadRequest"
    status, doc = _get(app, "/networking/v2.0/ports", auth, fields=["id", "status"], limit=["3"])
    assert status == 200 and [sorted(p) for p in doc["ports"]] == [["id", "status"]] * 3
    status, doc = _get(app, "/nowhere", auth)
    assert status == 404 and doc["itemNotFound"]["code"] == 404
    status, doc = _get(app, "/compute/v2.1/servers", {})
    assert status == 401 and doc["error"]["code"] == 401

    accepting, auth2 = _app(site, "accept")
    status, doc = _get(
        accepting, "/networking/v2.0/ports", auth2, changed_since=["2999-01-01T00:00:00Z"]
    )
    assert status == 200 and doc["ports"] == []


def test_a_storm_with_changed_ends_that_fraction_elsewhere() -> None:
    site = _site()
    before = {(o["kind"], o["id"]): o for o in site.truth()}
    plan = behaviour.storm_plan(site, [SERVER, PORT, VOLUME])
    endings = behaviour.storm_endings(site, plan, 0.1)
    flapping = len(plan[0])
    assert len(endings) == round(0.1 * flapping)
    behaviour.run_storm(site, plan, flaps=3, seconds=0.0, stop=threading.Event(), endings=endings)
    assert site.counters.updates == 3 * sum(len(step) for step in plan), "no extra change"
    after = {(o["kind"], o["id"]): o for o in site.truth()}
    moved = {key for key, obj in before.items() if after[key]["status"] != obj["status"]}
    assert len(moved) == len(endings)
    allowed = {SERVER: {"ERROR", "SHUTOFF"}, VOLUME: {"error"}, PORT: {"DOWN"}}
    for kind, object_id in moved:
        assert after[(kind, object_id)]["status"] in allowed[kind]
        if kind == VOLUME:
            assert (
                after[(kind, object_id)]["attachments"] == before[(kind, object_id)]["attachments"]
            )
