"""The import contracts of pyproject.toml (`make lint` runs them with `lint-imports`) break when a
forbidden import comes back: for each contract, a copy of the package with one such import added
fails `lint-imports` naming that contract and that import, and only that contract. Every contract
has its case here, so a contract added without one fails too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

#: Contract name -> (module of the copy that gains the import, the module it imports).
FORBIDDEN = {
    "librdkafka (confluent_kafka) is imported only under connector.kafka": (
        "connector/top/fair.py",
        "confluent_kafka",
    ),
    "the product never imports the development tools (connector.dev); only the CLI's dev "
    "commands do": ("connector/top/fair.py", "connector.dev.sim"),
    "connector.kafka knows nothing of records, the site and top sides, sinks or the app": (
        "connector/kafka/settings.py",
        "connector.records",
    ),
    "connector.records knows nothing of Kafka, the site and top sides, sinks or the app": (
        "connector/records/model.py",
        "connector.kafka",
    ),
    "connector.sinks knows nothing of Kafka or the site and top sides": (
        "connector/sinks/base.py",
        "connector.top",
    ),
    "the site side and the top side do not import each other": (
        "connector/top/fair.py",
        "connector.site",
    ),
    "the site side does not import the top side or the sinks": (
        "connector/site/backoff.py",
        "connector.sinks",
    ),
}


def _contracts() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [c["name"] for c in config["tool"]["importlinter"]["contracts"]]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the package copy under `root` (first on the path, so the installed
    package is not the one read)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(
        ROOT / "connector", root / "connector", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


def test_every_contract_has_a_forbidden_import_case() -> None:
    assert sorted(_contracts()) == sorted(FORBIDDEN)


def test_the_unchanged_copy_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint_imports(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(FORBIDDEN)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize("contract", sorted(FORBIDDEN))
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, contract: str) -> None:
    module, imported = FORBIDDEN[contract]
    root = _copy(tmp_path)
    with (root / module).open("a") as f:
        f.write(f"\nimport {imported}  # forbidden by the contract under test\n")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # the report wraps long contract names
    assert f"Contracts: {len(FORBIDDEN) - 1} kept, 1 broken." in out, result.stdout
    broken = out.split("Broken contracts", 1)[1]
    assert " ".join(contract.split()) in broken
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {imported}" in broken, result.stdout
