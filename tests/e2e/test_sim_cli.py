"""`cascade-connector sim` as a process: one process serving several whole sites, each on its
own port with its own Keystone and catalog, reached by unmodified openstacksdk."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import openstack
import requests
import yaml
from openstack import config

from tests.support import wait_for
from tests.support.cli import CLI


def clouds(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    return dict(loaded.get("clouds") or {})


def test_one_sim_process_serves_several_sites_to_openstacksdk(tmp_path: Path) -> None:
    path = tmp_path / "clouds.yaml"
    names = ["multi-a", "multi-b", "multi-c"]
    options = ["--listen=127.0.0.1:0", "--servers=40", "--volumes=5", "--ports=7"]
    proc = subprocess.Popen(
        [*CLI, "sim", *(f"--site={n}" for n in names), *options, f"--write-clouds-yaml={path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: len(clouds(path)) == len(names), 60, "the sites' clouds.yaml entries")
        entries = clouds(path)
        auth_urls = {entries[n]["auth"]["auth_url"] for n in names}
        assert len(auth_urls) == len(names), f"each site on its own port: {auth_urls}"
        ids: dict[str, set[str]] = {}
        for name in names:
            region = config.OpenStackConfig(config_files=[str(path)]).get_one(cloud=name)
            conn = openstack.connection.Connection(config=region)
            ids[name] = {s.id for s in conn.compute.servers(all_projects=True)}
            assert len(ids[name]) == 40
            assert len(list(conn.network.ports())) == 7
            conn.close()
        assert not ids["multi-a"] & ids["multi-b"], "sites share no ids (seed+i each)"
        # A storm in one site leaves the others as they were.
        base = entries["multi-a"]["auth"]["auth_url"].removesuffix("/identity")
        other = entries["multi-b"]["auth"]["auth_url"].removesuffix("/identity")
        before = requests.get(f"{other}/_sim/stats", timeout=10).json()["status_changes"]
        requests.post(f"{base}/_sim/churn", json={"changes": 20}, timeout=10).raise_for_status()
        assert requests.get(f"{base}/_sim/stats", timeout=10).json()["status_changes"] >= 20
        assert requests.get(f"{other}/_sim/stats", timeout=10).json()["status_changes"] == before
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "3 site(s) stopping" in output
