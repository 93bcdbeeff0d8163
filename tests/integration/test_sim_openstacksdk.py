"""Unmodified openstacksdk against the simulated site over HTTP: authentication through a
clouds.yaml, microversion negotiation, paging through thousands of objects, the incremental
filters as the real services treat them, and churn, deletions, storms, expiry and faults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openstack
import pytest
import requests
from openstack import config, exceptions

from connector.dev.sim import RunningSim, start_sim
from tests.support import wait_for


def connect(sim: RunningSim, tmp_path: Path, **overrides: Any) -> openstack.connection.Connection:
    """openstack.connect(cloud=<site>) through the clouds.yaml the sim writes."""
    path = sim.write_clouds_yaml(tmp_path / "clouds.yaml")
    region = config.OpenStackConfig(config_files=[str(path)]).get_one(cloud=sim.cloud, **overrides)
    return openstack.connection.Connection(config=region)


def control(sim: RunningSim, method: str, path: str, **body: Any) -> Any:
    answer = requests.request(method, f"{sim.url}/_sim/{path}", json=body or None, timeout=30)
    answer.raise_for_status()
    return answer.json() if answer.content else None


def truth(sim: RunningSim, kind: str) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in control(sim, "GET", f"truth?kind={kind}")["objects"]}


def whole_second_now() -> str:
    return datetime.fromtimestamp(int(time.time()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def at_or_after(stamp: str, since: str) -> bool:
    """Compare API times as times: Cinder's have microseconds and no zone, Nova's a Z."""

    def parse(text: str) -> datetime:
        value = datetime.fromisoformat(text)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    return parse(stamp) >= parse(since)


@pytest.fixture(scope="module")
def big_sim() -> Iterator[RunningSim]:
    """Read-only tests share one site with thousands of objects."""
    with start_sim("sdkbig", servers=1500, volumes=1000, ports=1500, seed=11) as sim:
        yield sim


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    """Tests that change the site get their own."""
    with start_sim("sdk", servers=400, volumes=300, ports=400, seed=5) as running:
        yield running


def test_sdk_pages_through_thousands_of_servers_volumes_and_ports(
    big_sim: RunningSim, tmp_path: Path
) -> None:
    conn = connect(big_sim, tmp_path)
    servers = list(conn.compute.servers(all_projects=True, limit=1000))
    assert {s.id: s.status for s in servers} == {
        i: o["status"] for i, o in truth(big_sim, "server").items()
    }
    assert servers[0].vm_state and servers[0].power_state is not None
    own = conn.compute.get("/servers/detail", params={"limit": 1000}).json()["servers"]
    # Without all_tenants: the token's project only.
    assert 0 < len(own) < len(servers)
    assert {s["tenant_id"] for s in own} == {conn.current_project_id}
    volumes = list(conn.block_storage.volumes(all_projects=True, limit=400))
    assert {v.id: v.status for v in volumes} == {
        i: o["status"] for i, o in truth(big_sim, "volume").items()
    }
    ports = list(conn.network.ports(limit=400))
    assert len(ports) == len(truth(big_sim, "port"))
    stats = control(big_sim, "GET", "stats")["requests"]
    assert stats["GET /compute/v2.1/servers/detail"] >= 3
    # 3 full pages of 400, the rest, and the empty page the sdk asks for after a short one.
    assert stats["GET /networking/v2.0/ports"] == 5


def test_projected_port_listing(big_sim: RunningSim, tmp_path: Path) -> None:
    conn = connect(big_sim, tmp_path)
    fields = ["id", "status", "revision_number"]
    ports = list(conn.network.ports(fields=fields, limit=1000))
    want = truth(big_sim, "port")
    assert {p.id: (p.status, p.revision_number) for p in ports} == {
        i: (o["status"], o["revision_number"]) for i, o in want.items()
    }
    raw = conn.network.get("/ports", params={"fields": fields, "limit": 2}).json()
    assert [sorted(p) for p in raw["ports"]] == [sorted(fields)] * 2
    assert raw["ports_links"][0]["rel"] == "next"


def test_microversions_negotiated_and_refused(big_sim: RunningSim, tmp_path: Path) -> None:
    conn = connect(big_sim, tmp_path)
    server = next(iter(conn.compute.servers(all_projects=True, limit=1)))
    assert server.pinned_availability_zone is None  # 2.96+ field: negotiated 2.100
    answer = conn.compute.get("/servers", microversion="2.200")
    assert answer.status_code == 406
    assert "maximum is 2.100" in answer.json()["notAcceptable"]["message"]


def test_changes_since_sees_churn_and_deletions(sim: RunningSim, tmp_path: Path) -> None:
    conn = connect(sim, tmp_path)
    since = whole_second_now()
    done = control(sim, "POST", "churn", changes=300)
    assert done["deleted"] > 0
    changed = list(conn.compute.servers(all_projects=True, changes_since=since, limit=50))
    live = truth(sim, "server")
    recent = {i for i, o in live.items() if at_or_after(o["updated_at"], since)}
    assert recent <= {s.id for s in changed}
    deleted = {s.id for s in changed if s.status == "DELETED"}
    assert deleted and not deleted & live.keys()
    assert all(s.vm_state == "deleted" for s in changed if s.id in deleted)
    # Inclusive: a watermark equal to an object's updated time still returns it.
    newest = max(live.values(), key=lambda o: o["updated_at"])
    again = conn.compute.servers(all_projects=True, changes_since=newest["updated_at"])
    assert newest["id"] in {s.id for s in again}
    # Not listed without changes-since, gone entirely once archived.
    assert not deleted & {s.id for s in conn.compute.servers(all_projects=True)}
    assert control(sim, "POST", "archive")["archived"] >= len(deleted)
    after = conn.compute.servers(all_projects=True, changes_since=since)
    assert not deleted & {s.id for s in after}


def test_volume_time_filters_from_3_31(sim: RunningSim, tmp_path: Path) -> None:
    since = whole_second_now()
    control(sim, "POST", "churn", changes=200)
    volumes = truth(sim, "volume")
    recent = {i for i, o in volumes.items() if at_or_after(o["updated_at"], since)}
    assert recent and len(recent) < len(volumes)

    new = connect(sim, tmp_path)  # negotiates 3.71
    updated = new.block_storage.volumes(all_projects=True, updated_at=f"gte:{since}", limit=40)
    created = new.block_storage.volumes(all_projects=True, created_at=f"gte:{since}", limit=40)
    updated_ids, created_ids = {v.id for v in updated}, {v.id for v in created}
    # A volume created since and not updated after has a null updated_at, as in Cinder.
    assert updated_ids | created_ids == recent
    assert all(v.updated_at is None for v in created if v.id not in updated_ids)

    old = connect(sim, tmp_path, block_storage_default_microversion="3.30")
    ignored = old.block_storage.volumes(all_projects=True, updated_at=f"gte:{since}")
    assert {v.id for v in ignored} == set(volumes)  # silently ignored below 3.31

    bad = new.block_storage.get(
        "/volumes/detail", params={"updated_at": "gte:soon"}, microversion="3.60"
    )
    assert bad.status_code == 400


def test_neutron_changed_since_switch(tmp_path: Path) -> None:
    with start_sim("strict", ports=50, seed=1) as strict:
        answer = connect(strict, tmp_path).network.get(
            "/ports", params={"changed_since": whole_second_now()}
        )
        assert answer.status_code == 400
        assert "changed_since" in answer.json()["NeutronError"]["message"]
    with start_sim("lenient", ports=200, seed=1, neutron_changed_since="accept") as lenient:
        conn = connect(lenient, tmp_path)
        since = whole_second_now()
        control(lenient, "POST", "storm", flaps=1, seconds=0, kinds=["port"])
        wait_for(lambda: control(lenient, "GET", "stats")["background_jobs"] == 0)
        listed = conn.network.get("/ports", params={"changed_since": since}).json()["ports"]
        flapped = {
            i for i, o in truth(lenient, "port").items() if at_or_after(o["updated_at"], since)
        }
        assert {p["id"] for p in listed} == flapped and flapped


def test_storm_is_seen_and_settles(sim: RunningSim, tmp_path: Path) -> None:
    conn = connect(sim, tmp_path)
    before = {p.id: (p.status, p.revision_number) for p in conn.network.ports()}
    started = control(sim, "POST", "storm", flaps=2, seconds=1.0, kinds=["server", "port"])
    assert started["objects"] > 0
    statuses_seen: set[str] = set()

    def settled() -> bool:
        statuses_seen.update(s.status for s in conn.compute.servers(all_projects=True))
        return bool(control(sim, "GET", "stats")["background_jobs"] == 0)

    wait_for(settled)
    stats = control(sim, "GET", "stats")
    assert stats["updates"] == started["changes"]
    after = {p.id: (p.status, p.revision_number) for p in conn.network.ports()}
    for port_id, (status, revision) in before.items():
        assert after[port_id][0] == status
        assert after[port_id][1] == revision + (6 if status == "ACTIVE" else 0)
    servers = {s.id: s.status for s in conn.compute.servers(all_projects=True)}
    assert servers == {i: o["status"] for i, o in truth(sim, "server").items()}
    assert {"ACTIVE", "SHUTOFF"} <= statuses_seen


def test_expired_token_is_refused_and_sdk_reauthenticates(tmp_path: Path) -> None:
    with start_sim("ttl", servers=20, seed=2, token_ttl=1.0) as sim:
        conn = connect(sim, tmp_path)
        assert len(list(conn.compute.servers(all_projects=True))) == 20
        token = conn.session.get_token()
        url = f"{sim.url}/compute/v2.1/servers"

        def refused() -> bool:
            answer = requests.get(url, headers={"X-Auth-Token": token}, timeout=10)
            return answer.status_code == 401

        wait_for(refused, timeout=10)
        assert len(list(conn.compute.servers(all_projects=True))) == 20
        tokens = control(sim, "GET", "stats")["requests"]["POST /identity/v3/auth/tokens"]
        assert tokens >= 2


def test_bad_input_answers_like_the_services(big_sim: RunningSim, tmp_path: Path) -> None:
    conn = connect(big_sim, tmp_path)
    with pytest.raises(exceptions.BadRequestException, match="changes-since"):
        list(conn.compute.servers(changes_since="not-a-time"))
    with pytest.raises(exceptions.BadRequestException, match="marker"):
        list(conn.compute.servers(marker="00000000-0000-0000-0000-000000000000"))
    with pytest.raises(exceptions.NotFoundException, match=r"Port 0+-0+-0+-0+-0+ could not"):
        list(conn.network.ports(marker="00000000-0000-0000-0000-000000000000", limit=10))
    with pytest.raises(exceptions.NotFoundException):
        conn.compute.get_server("00000000-0000-0000-0000-000000000000")
    answer = requests.get(f"{big_sim.url}/compute/v2.1/flavors/x", timeout=10)
    assert answer.status_code == 401  # auth first, as keystonemiddleware does
    answer = requests.get(f"{big_sim.url}/no/such/path", timeout=10)
    assert answer.status_code == 404
    assert answer.json() == {
        "itemNotFound": {"code": 404, "message": "The resource could not be found."}
    }


def test_injected_faults_fail_then_recover(sim: RunningSim, tmp_path: Path) -> None:
    conn = connect(sim, tmp_path)
    list(conn.compute.servers(limit=5))
    control(sim, "POST", "faults", status=500, seconds=60, paths=["/compute"])
    with pytest.raises(exceptions.HttpException) as failed:
        list(conn.compute.servers(limit=5))
    assert failed.value.status_code == 500
    assert len(list(conn.network.ports(limit=5))) > 0  # other paths unaffected
    control(sim, "DELETE", "faults")
    assert len(list(conn.compute.servers(all_projects=True))) > 0
