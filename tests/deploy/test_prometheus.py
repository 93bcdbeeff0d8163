"""deploy/prometheus: `promtool check config` (with its rule file), `promtool check rules` and
`promtool test rules`, whose tests give every alert a case where it fires and one where it does
not; broken copies of the rules and of their tests fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.deploy.conftest import DEPLOY, Tools, run_tool

PROMETHEUS = DEPLOY / "prometheus"


def alert_names(rules: Path) -> list[str]:
    groups = yaml.safe_load(rules.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_config_and_rules_pass_promtool(tools: Tools) -> None:
    for args in (
        ("check", "config", PROMETHEUS / "prometheus.yml"),
        ("check", "rules", PROMETHEUS / "alerts.yml"),
        ("test", "rules", PROMETHEUS / "alerts_test.yml"),
    ):
        outcome = run_tool(tools.promtool, *args, cwd=PROMETHEUS)
        assert outcome.ok, outcome.output
        assert "SUCCESS" in outcome.output


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = alert_names(PROMETHEUS / "alerts.yml")
    assert len(alerts) == 14 and len(set(alerts)) == len(alerts)
    cases = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fires = {c["alertname"] for t in cases for c in t["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for t in cases for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert fires == set(alerts), f"no firing case for {set(alerts) - fires}"
    assert quiet == set(alerts), f"no non-firing case for {set(alerts) - quiet}"


def test_broken_rules_fail(tools: Tools, tmp_path: Path) -> None:
    staged = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, staged)
    rules = staged / "alerts.yml"
    text = rules.read_text()

    rules.write_text(
        text.replace(
            "max by (site) (cascade_site_degraded) == 1",
            "max by (site) (cascade_site_degraded == 1",
        )
    )
    outcome = run_tool(tools.promtool, "check", "rules", rules)
    assert not outcome.ok and "parse error" in outcome.output, outcome.output

    # A threshold that no longer matches its tests: the firing case fails.
    rules.write_text(
        text.replace(
            "(cascade_site_heartbeat_age_seconds) > 15",
            "(cascade_site_heartbeat_age_seconds) > 600",
        )
    )
    outcome = run_tool(tools.promtool, "test", "rules", staged / "alerts_test.yml", cwd=staged)
    assert not outcome.ok and "CascadeSiteStale" in outcome.output, outcome.output

    # An alert that fires where its test says it must not: the non-firing case fails.
    rules.write_text(text.replace("for: 5m", "for: 1m", 1))
    outcome = run_tool(tools.promtool, "test", "rules", staged / "alerts_test.yml", cwd=staged)
    assert not outcome.ok and "CascadePollerDegraded, time: 6m" in outcome.output, outcome.output
