"""The `status` report over a real SQL sink (SQLite and PostgreSQL), and the command printing it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from connector.cli import cli
from connector.records.model import Deletion, StatusRecord
from connector.sinks.sql import SqlSink
from connector.sinks.status import DELETED, read_status

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def fill(url: str) -> None:
    sink = SqlSink(url, on_delete="mark")
    ago = [NOW - timedelta(seconds=s) for s in (5, 90)]
    sink.apply(
        [
            *(StatusRecord("east", "server", f"vm{i}", "ACTIVE", 10, NOW) for i in range(3)),
            StatusRecord("east", "server", "vm9", "ERROR", 10, NOW),
            StatusRecord("east", "port", "p1", None, 10, NOW),
            StatusRecord("west", "volume", "v1", "in-use", 3, NOW),
            Deletion("east", "server", "gone", 11),
            StatusRecord("east", "site", "east", "ok", 12, ago[0]),
            StatusRecord("west", "site", "west", "degraded", 4, ago[1]),
            StatusRecord("north", "site", "north", "ok", 1, ago[0]),
        ]
    )
    sink.close()


def test_counts_per_site_kind_and_status_and_heartbeat_age(sql_url: str) -> None:
    fill(sql_url)
    report = read_status(sql_url, stale_after=30, now=NOW)
    counts = {(c.site, c.kind, c.status): c.count for c in report.counts}
    assert counts == {
        ("east", "port", "-"): 1,
        ("east", "server", "ACTIVE"): 3,
        ("east", "server", "ERROR"): 1,
        ("east", "server", DELETED): 1,
        ("west", "volume", "in-use"): 1,
    }
    ages = {s.site: (s.status, s.age_seconds, s.stale) for s in report.sites}
    assert ages == {
        "east": ("ok", 5.0, False),
        "north": ("ok", 5.0, False),  # heartbeats but no objects yet: still reported
        "west": ("degraded", 90.0, True),
    }
    assert report.stale_sites == ["west"]
    text = report.render()
    assert "STALE (> 30 s)" in text and "90.0 s" in text


def test_one_site_and_a_site_without_heartbeat(sql_url: str) -> None:
    sink = SqlSink(sql_url)
    sink.apply([StatusRecord("lost", "server", "vm1", "ACTIVE", 1, NOW)])
    sink.close()
    report = read_status(sql_url, site="lost", now=NOW)
    assert [(s.site, s.observed_at, s.stale) for s in report.sites] == [("lost", None, True)]
    assert "STALE (no heartbeat)" in report.render()


def test_the_status_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'top.sqlite'}"
    fill(url)
    runner = CliRunner()
    # Heartbeats are hours old by the wall clock: every site is stale, and the exit status says so.
    result = runner.invoke(cli, ["status", "--sink", url])
    assert result.exit_code == 1, result.output
    assert "east" in result.output and "STALE" in result.output
    fresh = runner.invoke(cli, ["status", "--sink", url, "--site", "east", "--stale-after", "1e9"])
    assert fresh.exit_code == 0, fresh.output
    assert "west" not in fresh.output
    missing = runner.invoke(cli, ["status", "--sink", f"sqlite:///{tmp_path / 'none.sqlite'}"])
    # Not "stale" (1) but "cannot read the sink" (3), so a probe tells the two apart.
    assert missing.exit_code == 3 and "no SQLite sink database" in missing.output
