"""Fixtures for validating deploy/: the validators (installed by scripts/ensure-deploy-tools.sh,
the script `make test` runs; run here too, a no-op when cached) and a tool runner.

Every validation also runs on a deliberately broken copy, to show that it can fail.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


@dataclass(frozen=True)
class Tools:
    promtool: Path
    prometheus: Path
    systemd_analyze: Path
    deploycheck: Path
    podmonitor_crd: Path


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str  #: stdout and stderr together

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@pytest.fixture(scope="session")
def tools() -> Tools:
    script = ROOT / "scripts" / "ensure-deploy-tools.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"{script.name} failed:\n{done.stderr[-4000:]}")
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Tools(
        promtool=Path(found["promtool"]),
        prometheus=Path(found["prometheus"]),
        systemd_analyze=Path(found["systemd-analyze"]),
        deploycheck=Path(found["deploycheck"]),
        podmonitor_crd=Path(found["podmonitor-crd"]),
    )


def run_tool(*args: str | Path, cwd: Path | None = None) -> Outcome:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    return Outcome(done.returncode, done.stdout + done.stderr)
