"""deploy/systemd: `systemd-analyze verify` accepts both units without a word, and their
hardening scores well on `systemd-analyze security --offline`."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.deploy.conftest import DEPLOY, Outcome, Tools, run_tool

UNITS = DEPLOY / "systemd"
INSTALLED = "/opt/cascade-connector/bin/cascade-connector"
#: systemd-analyze security's exposure, times 10 (0 = locked down, 100 = fully exposed).
MAX_EXPOSURE = 20


def staged(tmp_path: Path, edit: tuple[str, str] | None = None) -> list[Path]:
    """The units copied to `tmp_path`, as instances (the template as site "east").

    `verify` checks that ExecStart's program exists, so the copies start the venv's real
    `cascade-connector` where the units name the installed one; nothing else is changed
    (except `edit`, an (old, new) replacement that breaks them on purpose).
    """
    venv_entry = Path(sys.executable).parent / "cascade-connector"
    assert venv_entry.is_file(), f"no {venv_entry}: install the package into this venv"
    paths = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        assert INSTALLED in text, f"{unit.name} does not start {INSTALLED}"
        text = text.replace(INSTALLED, str(venv_entry))
        if edit:
            text = text.replace(*edit)
        (tmp_path / unit.name).write_text(text)
        paths.append(tmp_path / unit.name.replace("@.service", "@east.service"))
    return paths


def verify(tools: Tools, units: list[Path]) -> Outcome:
    return run_tool(tools.systemd_analyze, "verify", *units, cwd=units[0].parent)


def test_units_verify_cleanly(tools: Tools, tmp_path: Path) -> None:
    units = staged(tmp_path)
    assert [u.name for u in units] == [
        "cascade-connector-consume.service",
        "cascade-connector-produce@east.service",
    ]
    outcome = verify(tools, units)
    # verify exits 0 on mere warnings (an unknown key is ignored): any output is a failure.
    assert outcome.ok and not outcome.output.strip(), outcome.output


def test_units_are_hardened(tools: Tools, tmp_path: Path) -> None:
    for unit in staged(tmp_path):
        outcome = run_tool(
            tools.systemd_analyze,
            "security",
            "--offline=true",
            f"--threshold={MAX_EXPOSURE}",
            "--no-pager",
            unit,
        )
        assert outcome.ok, outcome.output
        assert "Overall exposure level" in outcome.output
        text = unit.parent.joinpath(unit.name.replace("@east", "@")).read_text()
        for setting in (
            "User=cascade-connector",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "Restart=on-failure",
            "RestartPreventExitStatus=2",
        ):
            assert setting in text.splitlines(), f"{unit.name}: no {setting}"


def test_a_broken_unit_fails(tools: Tools, tmp_path: Path) -> None:
    mistyped = verify(tools, staged(tmp_path, ("Restart=on-failure", "Restart=on-fail")))
    assert "Failed to parse service restart specifier" in mistyped.output, mistyped.output
    unknown = verify(tools, staged(tmp_path, ("ProtectHome=yes", "ProtectHomes=yes")))
    assert "Unknown key" in unknown.output, unknown.output


def test_a_weakened_unit_fails_the_hardening_check(tools: Tools, tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    unit = staged(loose, ("User=cascade-connector\n", ""))[1]
    text = unit.parent.joinpath(unit.name.replace("@east", "@"))
    kept = [
        line
        for line in text.read_text().splitlines()
        if line.startswith(("[", "Description", "ExecStart", "Type", "Environment"))
    ]
    text.write_text("\n".join(kept) + "\n")
    outcome = run_tool(
        tools.systemd_analyze, "security", "--offline=true", f"--threshold={MAX_EXPOSURE}", unit
    )
    assert not outcome.ok, outcome.output
