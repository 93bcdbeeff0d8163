"""deploy/grafana's dashboard: a well-formed Grafana dashboard whose every query parses as
PromQL (promtool) and reads only the data source variable; a broken copy fails. That every
metric it names is really served is tests/deploy/test_dashboard_live.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.deploy.conftest import Tools, run_tool
from tests.deploy.dashboard import as_rules, load_dashboard, named_metrics, panel_queries

#: What the issue asks the dashboard to show, each by a metric it must name.
REQUIRED = {
    "cascade_site_heartbeat_age_seconds",
    "cascade_site_changes_published_total",
    "cascade_site_unchanged_suppressed_total",
    "cascade_site_api_requests_total",
    "cascade_site_api_response_bytes_total",
    "cascade_site_degraded",
    "cascade_consumer_lag_records",
    "cascade_consumer_rows_applied_total",
    "cascade_consumer_max_rate",
    "cascade_consumer_dead_letters_total",
    # Since issue 14: windows (issues 10, 18), HA pollers (12), notifications (17),
    # unparseable objects (13).
    "cascade_consumer_window_keys",
    "cascade_consumer_window_age_seconds",
    "cascade_consumer_skipped_unchanged_total",
    "cascade_consumer_site_pending_changes",
    "cascade_consumer_site_oldest_pending_seconds",
    "cascade_site_active",
    "cascade_site_notifications_received_total",
    "cascade_site_notification_polls_total",
    "cascade_site_notifications_up",
    "cascade_site_unparseable_objects_total",
    # Issue 28: site availability at the top.
    "cascade_site_availability",
    "cascade_site_availability_transitions_total",
}


def problems(dashboard: dict[str, Any]) -> list[str]:
    found = []
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    ids = [p["id"] for p in panels]
    if len(set(ids)) != len(ids):
        found.append(f"panel ids repeat: {sorted(ids)}")
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            found.append(f"{panel['title']}: wider than the grid")
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in cells:
                    found.append(f"{panel['title']} overlaps {cells[(x, y)]}")
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            sources = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
            if any(s != {"type": "prometheus", "uid": "${datasource}"} for s in sources):
                found.append(f"{panel['title']}: not on the ${{datasource}} variable")
            if not panel["targets"]:
                found.append(f"{panel['title']}: no query")
    return sorted(set(found))


def check_queries(tools: Tools, dashboard: dict[str, Any], tmp_path: Path) -> str:
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text(as_rules(panel_queries(dashboard)))
    outcome = run_tool(tools.promtool, "check", "rules", rules)
    return "" if outcome.ok else outcome.output


def test_the_dashboard_is_sound(tools: Tools, tmp_path: Path) -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "cascade-connector"
    assert problems(dashboard) == []
    assert check_queries(tools, dashboard, tmp_path) == ""
    assert REQUIRED - set(named_metrics(panel_queries(dashboard))) == set()


def test_a_broken_dashboard_fails(tools: Tools, tmp_path: Path) -> None:
    dashboard = load_dashboard()
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace(")", "", 1)
    assert "parse error" in check_queries(tools, dashboard, tmp_path)

    dashboard = load_dashboard()
    dashboard["panels"][2]["gridPos"] = dict(dashboard["panels"][1]["gridPos"])
    dashboard["panels"][3]["datasource"] = {"type": "prometheus", "uid": "PBFA97CFB590B2093"}
    found = problems(dashboard)
    assert f"{dashboard['panels'][2]['title']} overlaps {dashboard['panels'][1]['title']}" in found
    assert f"{dashboard['panels'][3]['title']}: not on the ${{datasource}} variable" in found
