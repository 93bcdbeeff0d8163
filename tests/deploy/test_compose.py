"""deploy/compose/compose.yaml, loaded by compose-go (the parser of Docker Compose itself) through
tests/deploy/deploycheck: a valid project, every file it refers to present, and the stack the
README describes (3 KRaft brokers of apache/kafka, two sims, a poller each, the consumer into
PostgreSQL, Prometheus with the alert rules, Grafana with the dashboard)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

from tests.deploy.conftest import DEPLOY, ROOT, Tools, run_tool

COMPOSE = DEPLOY / "compose" / "compose.yaml"


def load(tools: Tools, compose: Path) -> dict[str, Any]:
    outcome = run_tool(tools.deploycheck, "compose", compose)
    assert outcome.ok, outcome.output
    project: dict[str, Any] = json.loads(outcome.output)
    return project


def missing_files(project: dict[str, Any]) -> list[str]:
    """Every file or directory the resolved project names (absolute paths) that does not exist."""
    named = []
    for kind in ("configs", "secrets"):
        named += [
            (f"{kind} {n}", d["file"]) for n, d in project.get(kind, {}).items() if "file" in d
        ]
    for name, service in project["services"].items():
        build = service.get("build")
        if build:
            named.append((f"{name} build context", build["context"]))
            named.append((f"{name} Dockerfile", str(Path(build["context"]) / build["dockerfile"])))
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                named.append((f"{name} bind mount", volume["source"]))
        for env_file in service.get("env_file", []):
            named.append((f"{name} env_file", env_file["path"]))
    return [f"{what}: {path}" for what, path in named if not Path(path).exists()]


def test_the_stack_is_valid_and_complete(tools: Tools) -> None:
    project = load(tools, COMPOSE)
    assert missing_files(project) == []
    services = project["services"]
    brokers = [s for s in services.values() if s["image"].startswith("apache/kafka:")]
    assert len(brokers) == 3
    voters = {b["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for b in brokers}
    assert len(voters) == 1 and voters.pop().count("@") == 3
    assert {b["environment"]["KAFKA_NODE_ID"] for b in brokers} == {"1", "2", "3"}
    cluster_ids = {b["environment"]["CLUSTER_ID"] for b in brokers}
    assert len(cluster_ids) == 1
    assert len(base64.urlsafe_b64decode(cluster_ids.pop() + "==")) == 16, "not a Kafka cluster id"
    assert all(b["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller" for b in brokers)

    def runs(name: str) -> list[str]:
        return list(services[name].get("command") or [])

    sims = sorted(n for n in services if runs(n)[:1] == ["sim"])
    pollers = sorted(n for n in services if runs(n)[:1] == ["produce"])
    assert len(sims) == 2 and len(pollers) == 2
    for poller, sim in zip(pollers, sims, strict=True):
        # The sim's catalog names 127.0.0.1, so its poller shares its network namespace.
        assert services[poller]["network_mode"] == f"service:{sim}"
        assert services[poller]["depends_on"][sim]["condition"] == "service_healthy"
    consumer = next(s for s in services.values() if (s.get("command") or [])[:1] == ["consume"])
    assert consumer["environment"]["CASCADE_SINK_URL"].startswith("postgresql://")
    assert services["postgres"]["image"].startswith("postgres:")
    configs = project["configs"]
    prometheus_files = {configs[c["source"]]["file"] for c in services["prometheus"]["configs"]}
    assert str(DEPLOY / "prometheus" / "alerts.yml") in prometheus_files
    grafana_files = {configs[c["source"]]["file"] for c in services["grafana"]["configs"]}
    assert str(DEPLOY / "grafana" / "cascade-connector.json") in grafana_files
    assert Path(services[pollers[0]]["build"]["context"]) == ROOT


def test_a_broken_compose_file_fails(tools: Tools, tmp_path: Path) -> None:
    staged = tmp_path / "deploy"
    shutil.copytree(DEPLOY, staged)
    compose = staged / "compose" / "compose.yaml"
    text = compose.read_text()

    compose.write_text(text.replace("sim-east: {condition", "sim-north: {condition"))
    outcome = run_tool(tools.deploycheck, "compose", compose)
    assert not outcome.ok and "sim-north" in outcome.output, outcome.output

    assert text.endswith("  prometheus:\n")
    compose.write_text(text.removesuffix("  prometheus:\n"))
    outcome = run_tool(tools.deploycheck, "compose", compose)
    assert not outcome.ok and "undefined volume prometheus" in outcome.output, outcome.output

    compose.write_text(text.replace("retries: 12", "retries: twelve", 1))
    outcome = run_tool(tools.deploycheck, "compose", compose)
    assert not outcome.ok and "retries" in outcome.output, outcome.output

    compose.write_text(text)
    (staged / "grafana" / "cascade-connector.json").unlink()
    assert missing_files(load(tools, compose)) == [
        f"configs dashboard: {staged / 'grafana' / 'cascade-connector.json'}"
    ]
