"""Reading deploy/grafana's dashboard and deploy/prometheus's rules: their queries and the
metric names those name (shared by the offline and the live dashboard tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "cascade-connector.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\b(cascade_[a-z0-9_]+)\b")
#: Grafana's variables, replaced by values PromQL accepts so promtool can parse the queries.
VARIABLES = {"$__rate_interval": "1m", "$site": ".*"}


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every target of every panel, rows included."""
    panels = list(dashboard["panels"])
    found = []
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return found


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def alert_queries(path: Path = ALERTS) -> list[tuple[str, str]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def named_metrics(queries: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Metric name -> the panels (or alerts) whose queries name it."""
    found: dict[str, list[str]] = {}
    for title, expr in queries:
        for name in METRIC.findall(expr):
            found.setdefault(name, []).append(title)
    return found


def as_rules(queries: list[tuple[str, str]]) -> str:
    """The queries as a Prometheus rule file, so `promtool check rules` parses each one."""
    rules = []
    for i, (_title, expr) in enumerate(queries):
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
