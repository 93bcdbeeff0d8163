"""Integration fixtures: for the SQL sink, a throwaway PostgreSQL cluster (session-scoped) and
`sql_url`, a fresh empty database per test on SQLite and on that PostgreSQL; `open_sim`, a
simulated site whose clouds.yaml entry openstacksdk finds.

The cluster comes from `connector.ops.local_postgres` (Debian's binaries, installed by
scripts/ensure-postgres.sh). A cluster that cannot start fails the tests; it never skips them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.ops.local_postgres import LocalPostgres, LocalPostgresError
from connector.sim import RunningSim, start_sim
from connector.sinks.sql import sqlalchemy_url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A running throwaway cluster; `.url` is its `postgres` database, as superuser."""
    server = LocalPostgres()
    try:
        server.start()
    except LocalPostgresError as exc:
        pytest.fail(f"could not start a throwaway PostgreSQL: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_database(postgres_server: LocalPostgres) -> Iterator[str]:
    """URL of a new empty database on the throwaway cluster, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(sqlalchemy_url(postgres_server.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty SQL sink database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sink.sqlite'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
def open_sim(
    tmp_path: Path, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., RunningSim]]:
    """`open_sim(**counts)`: a simulated site whose clouds.yaml entry openstacksdk finds."""
    started: list[RunningSim] = []
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))

    def open_(**options: Any) -> RunningSim:
        name = unique_name("site").replace("test.", "", 1)[-60:].lstrip(".-")
        sim = start_sim(name, **options)
        started.append(sim)
        sim.write_clouds_yaml(tmp_path / "clouds.yaml")
        return sim

    yield open_
    for sim in started:
        sim.stop()
