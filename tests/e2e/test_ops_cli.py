"""Operations through the CLI as a user runs it: no secret in any output, and `status` exit codes
a probe can act on (0 fresh, 1 stale, 2 bad settings, 3 the sink cannot be read)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connector.dev import free_port
from connector.records.model import StatusRecord
from connector.sinks import open_sink

CLI = [sys.executable, "-m", "connector"]
SECRET = "s3cr3t"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


def test_config_prints_no_password() -> None:
    out = run(
        "config",
        "-X",
        f"sasl.password={SECRET}",
        "-X",
        f"ssl.key.password={SECRET}",
        env={
            "CASCADE_SINK_URL": f"postgresql://u:{SECRET}@127.0.0.1/db",
            "CASCADE_KAFKA_SCHEMA_REGISTRY_URL": f"https://reg:{SECRET}@registry.example:8081",
        },
    )
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    # The rest is still there, so the output still tells what is configured.
    assert "postgresql://u:***@127.0.0.1/db" in out.stdout
    assert '"sasl.password": "***"' in out.stdout
    assert "https://reg:***@registry.example:8081" in out.stdout


def test_a_bad_setting_next_to_a_url_with_a_password_names_it_without_the_password() -> None:
    out = run("config", env={"CASCADE_SINK_URL": f"ftp://u:{SECRET}@host/db"})
    assert out.returncode == 2
    assert "sink.url" in out.stderr and "CASCADE_SINK_URL" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_status_of_an_unreachable_database_exits_3_without_the_password() -> None:
    url = f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/db"
    out = run("status", "--sink", url)
    assert out.returncode == 3, out.stderr
    assert "cannot read the sink" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_status_exit_codes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'top.sqlite'}"
    assert run("status", "--sink", url).returncode == 3  # no database yet
    assert run("status", "--sink", "sqlite://").returncode == 2  # not a file: bad setting

    sink = open_sink(url)
    now = datetime.now(UTC)
    sink.apply(
        [
            StatusRecord("east", "site", "east", "ok", sequence=1, observed_at=now),
            StatusRecord("west", "site", "west", "ok", sequence=1, observed_at=now),
        ]
    )
    fresh = run("status", "--sink", url)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    hour_ago = now - timedelta(hours=1)
    sink.apply([StatusRecord("west", "site", "west", "ok", sequence=2, observed_at=hour_ago)])
    sink.close()
    stale = run("status", "--sink", url)
    assert stale.returncode == 1
    assert "west" in stale.stdout and "STALE" in stale.stdout


def test_consume_with_an_unreachable_database_shows_no_password() -> None:
    url = f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/db"
    out = run("consume", "--sink", url, "--bootstrap", f"127.0.0.1:{free_port()}")
    assert out.returncode != 0
    assert "sink" in out.stderr
    assert SECRET not in out.stdout + out.stderr
