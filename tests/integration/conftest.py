"""Integration fixtures: for the SQL sink, a throwaway PostgreSQL cluster (session-scoped) and
`sql_url`, a fresh empty database per test on SQLite and on that PostgreSQL; `open_sim`, a
simulated site whose clouds.yaml entry openstacksdk finds; for the registry framing, a real
Schema Registry (session-scoped); `private_kafka`, a broker of the tests' own that a test may
stop, start or freeze (session-scoped: one JVM for every such test); `real_cloud`, a real
Keystone and cinder-api (session-scoped: one pair for every test that needs them), and
`real_network`, a real neutron-server beside them (session-scoped, started by the first test
that needs it).

The cluster comes from `connector.dev.local_postgres` (Debian's binaries, installed by
`make postgres`); the registry is Apicurio Registry from Maven Central
(scripts/ensure-schema-registry.sh); Keystone and cinder-api come from their own venv
(scripts/ensure-openstack.sh, `connector.dev.local_openstack`), neutron-server from a venv of its
own with a PostgreSQL cluster of its own. A service that cannot start
fails the tests; it never skips them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
import sqlalchemy as sa

from connector.dev import free_port, free_port_run
from connector.dev.local_kafka import LocalKafka
from connector.dev.local_openstack import LocalOpenStack, LocalOpenStackError, ensure_installed
from connector.dev.local_postgres import LocalPostgres
from connector.dev.sim import RunningSim, start_sim
from connector.errors import ConnectorError, LocalKafkaError
from connector.sinks.sql import sqlalchemy_url
from tests.support.kafka import BROKER_START
from tests.support.openstack import RealCloud, RealNetwork
from tests.support.services import running

#: Seconds the registry (a JVM) may take to answer; about a minute on this loaded 2-core machine.
REGISTRY_START_TIMEOUT = 240.0


@pytest.fixture(scope="session")
def private_kafka_server() -> Iterator[LocalKafka]:
    """A broker nobody else uses, made on the first test that asks for it and killed at the end
    of the session. Its state is not under pytest's base temp, which a concurrent pytest run may
    prune while this one runs. Tests take it through `private_kafka`."""
    state = Path(tempfile.mkdtemp(prefix="cascade-test-kafka-"))
    broker = LocalKafka(port=free_port_run(2), state_dir=state, quick_jvm=True)
    try:
        yield broker
    finally:
        # A throwaway (its state goes next): killed at once, not shut down cleanly, which
        # takes seconds on a loaded machine and proves nothing here.
        broker.stop(timeout=0.0)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def private_kafka(private_kafka_server: LocalKafka) -> LocalKafka:
    """The tests' own broker, running and answering when the test begins. A test may stop,
    start or freeze it, but must not leave it frozen: whatever it leaves stopped is started
    here for the next test that needs it (and not at all when none does)."""
    try:
        private_kafka_server.start(timeout=BROKER_START, echo=False)
    except LocalKafkaError as exc:
        pytest.fail(f"could not start a broker of the tests' own: {exc}")
    return private_kafka_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A running throwaway cluster; `.url` is its `postgres` database, as superuser."""
    with running(LocalPostgres(), "a throwaway PostgreSQL") as server:
        yield server


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
        # A second site of the same test gets a name of its own.
        what = f"site{len(started)}" if started else "site"
        name = unique_name(what).replace("test.", "", 1)[-60:].lstrip(".-")
        sim = start_sim(name, **options)
        started.append(sim)
        sim.write_clouds_yaml(tmp_path / "clouds.yaml")
        return sim

    yield open_
    for sim in started:
        sim.stop()


@pytest.fixture(scope="session")
def real_cloud() -> Iterator[RealCloud]:
    """Keystone and cinder-api, running (about 15 s to start). Installed first if missing, with
    a warning: `make openstack` (run by `make test`) installs them before any test."""
    started = time.monotonic()
    try:
        venvs, installed = ensure_installed()
    except LocalOpenStackError as exc:
        pytest.fail(f"could not install a real Keystone and cinder-api: {exc}")
    if installed:
        took = time.monotonic() - started
        warnings.warn(
            f"Keystone and cinder-api were installed inside the test session ({took:.0f} s): "
            "`make openstack` installs them before the tests",
            stacklevel=1,
        )
    with running(LocalOpenStack(venvs), "a real Keystone and cinder-api") as services:
        yield RealCloud(services)


@pytest.fixture
def clouds_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The clouds.yaml openstacksdk reads in this test (entries added by the test)."""
    path = tmp_path / "clouds.yaml"
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    return path


@pytest.fixture(scope="session")
def real_network(real_cloud: RealCloud) -> RealNetwork:
    """neutron-server beside `real_cloud`'s Keystone (about 10 s to start, with its own
    PostgreSQL cluster), registered in its catalog as `network`; stopped with `real_cloud`."""
    try:
        real_cloud.services.start_neutron()
    except ConnectorError as exc:  # LocalOpenStackError, or its PostgreSQL's LocalPostgresError
        pytest.fail(f"could not start a real neutron-server: {exc}")
    return RealNetwork(real_cloud)


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Confluent-compatible API URL of a real Apicurio Registry (in-memory storage), fetched
    by scripts/ensure-schema-registry.sh and started here on a free port; stopped by its pid."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "ensure-schema-registry.sh"
    fetched = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if fetched.returncode != 0:
        pytest.fail(f"{script.name} failed:\n{fetched.stderr[-4000:]}")
    jar = Path(fetched.stdout.strip())
    # A class-data archive of the registry's classes, dumped at the exit of the first run here,
    # makes later starts about 3x faster (21 s against 63-80 s on the loaded 2-core machine).
    archive = jar.parent / "classes.jsa"
    dump = archive.with_suffix(".jsa.part")
    cds = (
        f"-XX:SharedArchiveFile={archive}"
        if archive.exists()
        else f"-XX:ArchiveClassesAtExit={dump}"
    )
    workdir = tmp_path_factory.mktemp("schema-registry")
    port = free_port()
    log_path = workdir / "registry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            # C1 only: the registry serves a handful of requests; a faster start is worth more.
            ["java", "-XX:TieredStopAtLevel=1", cds, f"-Dquarkus.http.port={port}",
             "-Dquarkus.http.host=127.0.0.1", "-jar", str(jar)],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
    try:
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT
        while not _answers_http(f"{url}/subjects"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                pytest.fail(f"Apicurio Registry did not answer on {url}:\n{tail}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # 143: the JVM's exit after SIGTERM, once its shutdown (and the dump) is done.
        if proc.returncode in (0, 143) and dump.exists():
            dump.rename(archive)
        dump.unlink(missing_ok=True)


def _answers_http(url: str) -> bool:
    try:
        with urlopen(url, timeout=5) as response:
            return int(response.status) == 200
    except OSError:
        return False
