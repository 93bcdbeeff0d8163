"""The simulated Nova against Nova's official API samples (tests/fixtures/openstack-samples/nova,
copied from openstack/nova's doc/api_samples): a real Nova needs placement, a conductor and a
compute service, more than this machine runs in a test, so the sim's answers to the same requests
at the same microversions are compared with the samples instead: which fields are present, the
kind and format of each value (times digit by digit), link relations and paths, next links and
the filters they keep. A null compares equal to any value (the field is nullable; whether
it has a value is data), so does an empty list to a full one."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import openstack
import pytest

from connector.dev.sim import RunningSim, start_sim

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "openstack-samples" / "nova"

#: Fields Nova shows only to an admin, whose policy the sim's user has: the 2.100 samples were
#: taken by a user without it.
ADMIN_ONLY = {
    "OS-EXT-SRV-ATTR:host",
    "OS-EXT-SRV-ATTR:hypervisor_hostname",
    "OS-EXT-SRV-ATTR:instance_name",
    "OS-EXT-SRV-ATTR:kernel_id",
    "OS-EXT-SRV-ATTR:launch_index",
    "OS-EXT-SRV-ATTR:ramdisk_id",
    "OS-EXT-SRV-ATTR:reservation_id",
    "OS-EXT-SRV-ATTR:root_device_name",
    "OS-EXT-SRV-ATTR:user_data",
    "host_status",
}
#: Objects whose keys are data (names chosen by users), not fields: compared as "dict".
DATA = {"metadata", "addresses", "extra_specs", "scheduler_hints", "properties"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")

#: (sample file, microversion, request path, admin sample): the sim's answer to the request must
#: have the sample's shape.
CASES = [
    ("servers/servers-details-resp.json", "2.1", "/servers/detail?limit=1", True),
    ("servers/servers-list-resp.json", "2.1", "/servers?limit=1", True),
    ("servers/servers-list-status-resp.json", "2.1", "/servers?limit=1&status=error", True),
    ("servers/server-get-resp.json", "2.1", "/servers/{id}", True),
    (
        "servers/v2.66/servers-details-with-changes-before.json",
        "2.66",
        "/servers/detail?changes-before={before}",
        True,
    ),
    ("servers/v2.100/servers-details-resp.json", "2.100", "/servers/detail?limit=1", False),
    ("servers/v2.100/servers-list-resp.json", "2.100", "/servers?limit=1", False),
    ("servers/v2.100/server-get-resp.json", "2.100", "/servers/{id}", False),
]


def shape(value: Any, key: str = "") -> Any:
    """What a value looks like: its JSON kind, a time's format, a link's relation and the
    tail of its path, a next link's query keys."""
    if isinstance(value, dict):
        if key in DATA:
            return "dict"
        if "href" in value:
            parts = urlsplit(ID.sub("<id>", value["href"]))
            # from the collection on: endpoints differ (version, project id or none)
            tail = re.sub(r"^.*?/(servers|flavors|images)\b", r"\1", parts.path)
            query = sorted(k if k == "marker" else f"{k}={v}" for k, v in parse_qsl(parts.query))
            return {"rel": value.get("rel"), "href": tail, "query": query}
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0], key)] if value else []
    if isinstance(value, str):
        return "<time " + re.sub(r"\d", "d", value) + ">" if TIME.fullmatch(value) else "str"
    return type(value).__name__ if value is not None else "null"


def differences(sim: Any, sample: Any, admin_sample: bool, path: str = "") -> list[str]:
    if isinstance(sim, dict) and isinstance(sample, dict):
        keys = sim.keys() | sample.keys()
        if not admin_sample:
            keys -= ADMIN_ONLY
        return [
            line
            for k in sorted(keys)
            for line in differences(
                sim.get(k, "<absent>"), sample.get(k, "<absent>"), admin_sample, f"{path}.{k}"
            )
        ]
    if "null" in (sim, sample) and "<absent>" not in (sim, sample):
        return []  # a field without a value here has one there, or the other way round
    if isinstance(sim, list) and isinstance(sample, list):
        if not sim or not sample:
            return []  # no volume attached here, or no certificate there: data
        return [
            line
            for i, (a, b) in enumerate(zip(sim, sample, strict=False))
            for line in differences(a, b, admin_sample, f"{path}[{i}]")
        ]
    return [] if sim == sample else [f"{path}: sim {sim!r}, sample {sample!r}"]


@pytest.fixture(scope="module")
def nova_sim() -> Iterator[RunningSim]:
    with start_sim("samples", servers=300, volumes=100, ports=300, seed=3) as sim:
        yield sim


def test_the_sims_nova_answers_have_the_shape_of_novas_samples(nova_sim: RunningSim) -> None:
    entry = nova_sim.clouds_yaml_entry()
    conn = openstack.connect(auth=entry["auth"], region_name=entry["region_name"])
    # an active server with a volume attached and a port, as in the samples
    server = next(
        s
        for s in conn.compute.get("/servers/detail", microversion="2.1").json()["servers"]
        if s["status"] == "ACTIVE" and s["os-extended-volumes:volumes_attached"] and s["addresses"]
    )
    values = {"id": server["id"], "before": "2100-01-01T00:00:00Z"}
    found = []
    for sample_file, microversion, path, admin_sample in CASES:
        sample = json.loads((SAMPLES / sample_file).read_text())
        answer = conn.compute.get(path.format(**values), microversion=microversion)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
        doc = answer.json()
        assert doc.get("servers", [doc.get("server")]), f"{path}: nothing to compare"
        if "servers" in doc and "servers" in sample:  # the first of each, and the next link
            doc["servers"] = doc["servers"][:1]
            sample["servers"] = sample["servers"][:1]
        if "server" in doc and path.startswith("/servers/detail"):
            doc = {"servers": [doc["server"]]}
        found += [
            f"{sample_file} ({microversion}): {line}"
            for line in differences(shape(doc), shape(sample), admin_sample)
        ]
    assert not found, "\n".join(found)
