"""`cascade-connector audit`: rows changed, deleted and added behind the connector's back are
reported, `--repair` fixes them through the sink, and a second audit finds nothing;
`--against-site` finds what the site's APIs changed since the topic was written. A real broker,
PostgreSQL, a simulated site published once by a `produce --once` process, the top consumer in a
thread until every row is applied, then the audit as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from connector.config import load_settings
from connector.dev import free_port
from connector.dev.demo.observe import metric_total
from connector.dev.demo.processes import http_text
from connector.dev.sim import RunningSim
from connector.sinks.sql import sqlalchemy_url
from tests.support import wait_for
from tests.support.cli import CLI, run
from tests.support.sim import control
from tests.support.top import consumer_running

KINDS = "server,volume"
OBJECTS = 10  #: per kind


@dataclass
class Published:
    """A site published and applied at the top; how to run `audit` on it."""

    sim: RunningSim
    engine: sa.Engine
    args: list[str]
    env: dict[str, str]
    group: str

    def audit(self, *more: str) -> subprocess.CompletedProcess[str]:
        return run("audit", *self.args, *more, env=self.env)

    def row(self, kind: str, object_id: str) -> sa.Row[tuple[str, bool]] | None:
        query = sa.text(
            "SELECT status, deleted FROM resource_status WHERE site = :s AND kind = :k AND id = :i"
        )
        with self.engine.connect() as conn:
            return conn.execute(query, {"s": self.sim.cloud, "k": kind, "i": object_id}).first()

    def ids(self, kind: str) -> list[str]:
        query = sa.text("SELECT id FROM resource_status WHERE site = :s AND kind = :k ORDER BY id")
        with self.engine.connect() as conn:
            return list(conn.execute(query, {"s": self.sim.cloud, "k": kind}).scalars())

    def execute(self, statement: str, **params: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(statement), {"s": self.sim.cloud, **params})


@pytest.fixture
def published(
    kafka_bootstrap: str,
    open_sim: Callable[..., RunningSim],
    postgres_database: str,
    unique_name: Callable[[str], str],
) -> Iterator[Published]:
    sim = open_sim(servers=OBJECTS, volumes=OBJECTS, ports=0)
    prefix = unique_name("audit")
    env = {"CASCADE_KAFKA_TOPIC_PREFIX": prefix, "CASCADE_SITE_KINDS": KINDS}
    once = run("produce", "--bootstrap", kafka_bootstrap, "--site", sim.cloud, "--once", env=env)
    assert once.returncode == 0, once.stderr[-3000:]

    settings = load_settings(
        flags={
            "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": prefix},
            "sink": {"url": postgres_database},
            "consumer": {"group": f"{prefix}.top", "batch_wait_ms": 50},
        }
    )
    engine = sa.create_engine(sqlalchemy_url(postgres_database))
    args = ["--bootstrap", kafka_bootstrap, "--site", sim.cloud]
    site = Published(sim, engine, args, env, f"{prefix}.top")
    with consumer_running(settings):
        wait_for(
            lambda: len(site.ids("server")) + len(site.ids("volume")) == 2 * OBJECTS,
            timeout=60,
            what="every object of the site applied at the top",
        )
    site.env["CASCADE_SINK_URL"] = postgres_database
    yield site
    engine.dispose()


def test_rows_changed_deleted_and_added_behind_the_connectors_back_are_found_and_repaired(
    published: Published,
) -> None:
    site = published.sim.cloud
    clean = published.audit()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no drift" in clean.stdout

    changed, deleted = published.ids("server")[0], published.ids("volume")[0]
    status = published.row("server", changed)
    assert status is not None
    published.execute(
        "UPDATE resource_status SET status = 'BROKEN' WHERE site = :s AND id = :i", i=changed
    )
    published.execute("DELETE FROM resource_status WHERE site = :s AND id = :i", i=deleted)
    published.execute(
        "INSERT INTO resource_status (site, kind, id, status, sequence, deleted, applied_at) "
        "VALUES (:s, 'server', 'ghost', 'ACTIVE', 1, false, now())"
    )

    found = published.audit()
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"missing: 1 ({site}/volume/{deleted})" in found.stdout
    assert f"different: 1 ({site}/server/{changed})" in found.stdout
    assert f"extra: 1 ({site}/server/ghost)" in found.stdout

    repaired = published.audit("--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: 3 of 3 rows written" in repaired.stdout
    assert published.row("server", changed) == status
    restored = published.row("volume", deleted)
    assert restored is not None and not restored.deleted
    ghost = published.row("server", "ghost")
    assert ghost is not None and ghost.deleted  # marked, as the sink marks a tombstone

    again = published.audit()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no drift" in again.stdout


def test_against_site_finds_what_the_sites_apis_changed_since_the_topic(
    published: Published,
) -> None:
    same = published.audit("--against-site")
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.count("no drift") == 2, same.stdout

    control(published.sim, "/_sim/churn", {"changes": 3})
    moved = published.audit("--against-site")
    assert moved.returncode == 1, moved.stdout + moved.stderr
    top, against = moved.stdout.split("topic vs site APIs")
    assert "no drift" in top  # the top still equals the topic: the poller has not run
    assert "drift found" in against


def test_the_consumers_periodic_audit_exports_drift_that_stays_and_clears_after_repair(
    published: Published,
) -> None:
    """`consume --audit-interval`: a row changed behind the connector's back shows in
    `cascade_audit_drift_keys` (after two audits agree), the clean kinds read 0, and `audit
    --repair` brings it back to 0, while the consumer goes on."""
    site = published.sim.cloud
    changed = published.ids("server")[0]
    published.execute(
        "UPDATE resource_status SET status = 'BROKEN' WHERE site = :s AND id = :i", i=changed
    )
    port = free_port()
    bootstrap = published.args[1]
    command = [*CLI, "consume", "--bootstrap", bootstrap, "--metrics-port", str(port)]
    # A new group reads the topic from its start, so it reads the site's heartbeat and judges it.
    command += ["--group", f"{published.group}.audited", "--audit-interval", "1"]
    env = {**os.environ, **published.env}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/metrics"

    def drift(kind: str) -> float | None:
        try:
            text = http_text(url)
        except OSError:
            return None
        if "cascade_audit_drift_keys{" not in text:
            return None
        return metric_total(text, "cascade_audit_drift_keys", site=site, drift=kind)

    try:
        wait_for(lambda: drift("different") == 1, timeout=60, what="the changed row as drift")
        assert drift("missing") == 0 and drift("extra") == 0
        repaired = published.audit("--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        wait_for(lambda: drift("different") == 0, timeout=30, what="no drift after the repair")
        assert proc.poll() is None, "the consumer goes on"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
