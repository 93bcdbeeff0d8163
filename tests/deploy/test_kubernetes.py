"""deploy/kubernetes, built by kustomize's own API (tests/deploy/deploycheck), every manifest
validated offline against the Kubernetes schemas (`kubernetes-validate`, strict: unknown fields
fail) and the PodMonitor against the prometheus-operator CRD's own schema; plus what the
manifests promise: probes on a declared port, PDBs and policies that select real pods."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, Tools, run_tool

KUBERNETES = DEPLOY / "kubernetes"
#: The oldest Kubernetes the manifests are meant for (PDB unhealthyPodEvictionPolicy is GA in 1.31).
KUBERNETES_VERSION = "1.31.0"


def build(tools: Tools, directory: Path) -> list[dict[str, Any]]:
    outcome = run_tool(tools.deploycheck, "kustomize", directory)
    assert outcome.ok, outcome.output
    return [doc for doc in yaml.safe_load_all(outcome.output) if doc]


def invalid(doc: dict[str, Any], crds: dict[str, dict[str, Any]]) -> list[str]:
    """Why `doc` is not a valid object; empty when it is."""
    name = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    if doc.get("kind") in crds:
        schema = crds[doc["kind"]]
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        return [f"{name}: {e}" for e in errors + unknown_fields(doc, schema)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{name}: {exc.message} at {'.'.join(str(p) for p in exc.path)}"]
    return []


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the structural schema does not declare: the API server would drop them silently
    (and `kubectl apply` warns), so a typo would go unnoticed."""
    if isinstance(value, dict) and "properties" in schema:
        found = []
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"unknown field {path}.{key}".lstrip("."))
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [e for item in value for e in unknown_fields(item, schema["items"], f"{path}[]")]
    return []


@pytest.fixture(scope="module")
def crds(tools: Tools) -> dict[str, dict[str, Any]]:
    crd = yaml.safe_load(tools.podmonitor_crd.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return {crd["spec"]["names"]["kind"]: version["schema"]["openAPIV3Schema"]}


def test_every_manifest_is_valid(tools: Tools, crds: dict[str, dict[str, Any]]) -> None:
    docs = build(tools, KUBERNETES)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds.count("Deployment") == 3 and "PodMonitor" in kinds
    for kind in ("Namespace", "Secret", "PodDisruptionBudget", "NetworkPolicy"):
        assert kind in kinds
    assert [e for doc in docs for e in invalid(doc, crds)] == []


def test_the_manifests_fit_together(tools: Tools) -> None:
    docs = build(tools, KUBERNETES)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pollers = [
        d
        for d in deployments.values()
        if d["spec"]["template"]["spec"]["containers"][0]["args"] == ["produce"]
    ]
    assert len(pollers) == 2 and all(d["spec"]["replicas"] == 2 for d in pollers)
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    settings = tomllib.loads(secrets["kafka-credentials"]["stringData"]["connector.toml"])
    assert deployments["consumer"]["spec"]["replicas"] <= settings["kafka"]["partitions"]
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        ports = {p["name"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert "metrics" in ports
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for volume in pod["spec"]["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
        for budget in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
            selector = budget["spec"]["selector"]["matchLabels"]
            if selector.items() <= pod["metadata"]["labels"].items():
                break
        else:
            pytest.fail(f"no PodDisruptionBudget covers {deployment['metadata']['name']}")
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(
        selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        for d in deployments.values()
    )


@pytest.mark.parametrize(
    ("path", "old", "new", "problem"),
    [
        ("consumer.yaml", "readinessProbe:", "readynessProbe:", "readynessProbe"),
        ("consumer.yaml", "replicas: 2", "replicas: two", "'two' is not of type 'integer'"),
        ("podmonitor.yaml", "podMetricsEndpoints:", "podMetricEndpoints:", "podMetricEndpoints"),
        ("podmonitor.yaml", "interval: 15s", "interval: often", "'often' does not match"),
        ("pdb.yaml", "maxUnavailable: 1", "maxUnavailabel: 1", "maxUnavailabel"),
    ],
)
def test_a_broken_manifest_fails(
    tools: Tools,
    crds: dict[str, dict[str, Any]],
    tmp_path: Path,
    path: str,
    old: str,
    new: str,
    problem: str,
) -> None:
    staged = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, staged)
    text = (staged / path).read_text()
    assert old in text
    (staged / path).write_text(text.replace(old, new, 1))
    errors = [e for doc in build(tools, staged) for e in invalid(doc, crds)]
    assert any(problem in e for e in errors), errors


def test_a_missing_resource_fails_the_build(tools: Tools, tmp_path: Path) -> None:
    staged = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, staged)
    (staged / "pdb.yaml").unlink()
    outcome = run_tool(tools.deploycheck, "kustomize", staged)
    assert not outcome.ok and "pdb.yaml" in outcome.output, outcome.output
