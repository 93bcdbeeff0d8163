"""The kinds table: names, listed JSON to Observations (from the official API samples), and the
incremental filters and projections as they are written on the wire."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_settings
from connector.errors import ConfigError
from connector.records.checks import record_problem, resolve_kind_names
from connector.records.model import KIND_NAMES, StatusRecord
from connector.site.kinds import KINDS, Since, Unreadable, kinds_for
from connector.site.listing import parse_json

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "openstack-samples"


def sample(path: str, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads((SAMPLES / path).read_text())[key]
    return found


def observe(kind: str, raw: dict[str, Any]) -> Any:
    return KINDS[kind].observe(raw)


def test_server_from_the_nova_sample() -> None:
    raw = sample("nova/servers/servers-details-resp.json", "servers")[0]
    obs = observe("server", raw)
    assert obs.id == raw["id"] and obs.status == raw["status"] and obs.name == raw["name"]
    assert obs.project_id == raw["tenant_id"]
    assert obs.details["vm_state"] == raw["OS-EXT-STS:vm_state"]
    assert obs.details["power_state"] == raw["OS-EXT-STS:power_state"]
    assert obs.details["host"] == raw["OS-EXT-SRV-ATTR:host"]
    assert obs.source_updated_at is not None and obs.source_updated_at.tzinfo is not None
    assert not obs.deleted
    assert observe("server", {**raw, "status": "DELETED"}).deleted


def test_volume_from_the_cinder_sample_keeps_attached_servers_sorted() -> None:
    raw = sample("cinder/volumes/volumes-list-detailed-response.json", "volumes")[0]
    raw["attachments"] = [{"server_id": "zz"}, {"server_id": "aa"}]
    obs = observe("volume", raw)
    assert obs.status == raw["status"]
    assert obs.details["attachments"] == ["aa", "zz"]
    # Cinder writes naive microsecond times meaning UTC.
    assert obs.source_updated_at is None or obs.source_updated_at.tzinfo == UTC


def test_port_and_floatingip_from_the_neutron_samples() -> None:
    raw = sample("neutron/ports/ports-list-response.json", "ports")[0]
    obs = observe("port", raw)
    assert obs.revision == raw.get("revision_number")
    assert obs.details["device_owner"] == raw["device_owner"]
    assert obs.details["admin_state_up"] == raw["admin_state_up"]
    raw = sample("neutron/floatingips/floating-ips-list-response.json", "floatingips")[0]
    obs = observe("floatingip", raw)
    assert obs.name == raw["floating_ip_address"]
    assert obs.details["port_id"] == raw["port_id"]


SAMPLE_LISTINGS = [
    ("server", "nova/servers/servers-details-resp.json", "servers"),
    ("volume", "cinder/volumes/volumes-list-detailed-response.json", "volumes"),
    ("port", "neutron/ports/ports-list-response.json", "ports"),
    ("floatingip", "neutron/floatingips/floating-ips-list-response.json", "floatingips"),
]


@pytest.mark.parametrize(("kind", "path", "key"), SAMPLE_LISTINGS)
def test_an_observation_keeps_the_record_rules(kind: str, path: str, key: str) -> None:
    """The publisher encodes its records without checking them again (`checked`): the
    conversion alone must keep them valid, odd values included."""
    raw = sample(path, key)[0]
    wire_details = [how for how in KINDS[kind].details.values() if isinstance(how, str)]
    for odd in (None, ("a", "tuple"), {"a": 1}, 1.5, True, 2**40):
        obs = observe(kind, {**raw, **dict.fromkeys(wire_details, odd)})
        record = StatusRecord(
            site="s1",
            kind=kind,
            id=obs.id,
            status=obs.status,
            sequence=1,
            observed_at=datetime.now(UTC),
            name=obs.name,
            project_id=obs.project_id,
            details=obs.details,
            source_updated_at=obs.source_updated_at,
            revision=obs.revision,
        )
        assert record_problem(record) is None


def test_numbers_beyond_64_bits_make_the_object_unreadable() -> None:
    server = sample("nova/servers/servers-details-resp.json", "servers")[0]
    with pytest.raises(Unreadable, match=r"detail power_state: .* does not fit in 64 bits"):
        observe("server", {**server, "OS-EXT-STS:power_state": 2**64})
    port = sample("neutron/ports/ports-list-response.json", "ports")[0]
    with pytest.raises(Unreadable, match=r"revision_number: .* does not fit in 64 bits"):
        observe("port", {**port, "revision_number": 2**63})


def test_every_row_declares_what_the_poller_needs() -> None:
    for name, row in KINDS.items():
        assert row.name == name and "/" not in name
        assert row.path.startswith("/") and row.collection in row.path
        if row.revision_projection:
            assert row.wire.revision is not None
            assert set(row.revision_projection) == {row.wire.id, row.wire.revision}


def test_neutron_projections_name_every_field_the_row_reads() -> None:
    assert KINDS["port"].fields() == [
        "admin_state_up",
        "binding:host_id",
        "device_id",
        "device_owner",
        "id",
        "name",
        "project_id",
        "revision_number",
        "status",
        "updated_at",
    ]
    assert "floating_ip_address" in KINDS["floatingip"].fields()
    # Every detail of a projected row comes from a field the projection asks for.
    raw = sample("neutron/ports/ports-list-response.json", "ports")[0]
    projected = {k: v for k, v in raw.items() if k in KINDS["port"].fields()}
    assert observe("port", projected) == observe("port", raw)


def test_incremental_filters_on_the_wire() -> None:
    when = datetime(2024, 5, 1, 12, 30, 45, 999_000, tzinfo=UTC)
    assert KINDS["server"].since == Since("changes-since")
    assert KINDS["server"].since.value(when) == "2024-05-01T12:30:45Z"
    volume = KINDS["volume"].since
    assert volume is not None and volume.min_microversion == "3.60"
    assert volume.value(when) == "gte:2024-05-01T12:30:45Z"
    assert KINDS["port"].since is not None and KINDS["port"].since.may_be_rejected


def test_the_settings_know_the_kinds_of_the_table() -> None:
    assert tuple(KINDS) == KIND_NAMES


def test_kind_names_accept_plurals_and_name_the_known_ones() -> None:
    assert resolve_kind_names(["servers", "Volume", "port", "ports"]) == [
        "server",
        "volume",
        "port",
    ]
    with pytest.raises(ValueError, match="known kinds: server, volume, port"):
        resolve_kind_names(["vms"])
    assert [k.name for k in kinds_for(["floatingips"])] == ["floatingip"]


def test_site_settings_validation_names_the_field() -> None:
    settings = load_settings(
        env={"CASCADE_SITE_KINDS": "servers, routers", "CASCADE_SITE_NAME": "a"}
    )
    assert settings.site.kinds == ["server", "router"]
    with pytest.raises(ConfigError, match=r"site\.kinds: unknown kind 'vm'.*CASCADE_SITE_KINDS"):
        load_settings(env={"CASCADE_SITE_KINDS": "vm"})
    with pytest.raises(ConfigError, match=r"site\.interval"):
        load_settings(flags={"site": {"interval": 0}})


@pytest.mark.parametrize(
    "field", ["id", "OS-EXT-STS:power_state", "name"], ids=["the-id", "a-detail", "the-name"]
)
def test_an_integer_past_pythons_4300_digits_makes_only_its_object_unreadable(field: str) -> None:
    huge = "9" * 5000
    page = parse_json(
        f'{{"servers": [{{"id": "a", "status": "ACTIVE", "{field}": {huge}}},'
        ' {"id": "b", "status": "ACTIVE"}]}'.encode()
    )
    bad, good = page["servers"]
    with pytest.raises(Unreadable, match="an integer of 5000 digits"):
        observe("server", bad)
    assert observe("server", good).id == "b"
