"""Our paths against raw ceilings, in one run: how much of what the libraries can do we keep.

1. **Producer path**: `Publisher.observe` (fingerprint, record, Avro single-object encoding,
   produce) for N server observations, then flush; against raw fastavro `schemaless_writer`
   plus librdkafka `produce` (confluent-kafka, the same producer settings) of the same records.
   Twice: into librdkafka's own mock cluster (`test.mock.num.brokers`, in the process: no
   broker round trips, so what is measured is the Python and librdkafka CPU of each side; the
   `producer` line), then into topics of the local broker (acks=all, whose flush round trips
   bounded both sides at about the same rate in earlier runs; `producer (local broker)`).
2. **SQL apply**: `SqlSink.apply` of batches (2,000 distinct keys and a heartbeat each), one
   transaction each, converting the records inside the timing. On PostgreSQL against the
   fastest raw set-based merge of the same rows through the same driver (psycopg 3 alone):
   binary COPY into a temporary staging table plus one INSERT ... SELECT ... ON CONFLICT, and
   one INSERT ... SELECT FROM unnest(typed arrays), both measured, the faster counting. On
   SQLite against raw sqlite3: one prepared upsert stepped by `executemany` (WAL). The raw
   statements keep the sink's rules (higher sequence wins, unchanged content not rewritten).
3. **Poll cycle**: one `SitePoller` resync cycle (servers, volumes, ports through openstacksdk,
   nothing to publish: every fingerprint known); against a raw `requests` GET of the same pages
   (the URLs and headers the cycle sent, captured from its sessions), each body parsed as JSON.

Each pair runs `--rounds` times alternately, under the collector settings the product's
processes run with (`connector.ops.heap.collect_less`); the best round of each counts. Printed
as a table (raw, ours, ours as a percentage of raw), then one line per path of issue 25:
`sql-apply postgresql: ours N rows/s, raw set-based M rows/s (P%)`, `sql-apply sqlite: ...`,
`producer: ours N records/s, raw M records/s (P%)`.

    .venv/bin/python bench/ceilings.py [--quick] [--records N] [--rows N] [--servers N ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import requests
import sqlalchemy as sa
from common import (
    broker,
    drop_topics,
    ensure_topics,
    load,
    machine,
    start_sims,
)
from publish_path import MOCK, MOCK_BOOTSTRAP, avro_dict, observations, producer_ours, producer_raw
from sink_apply import make_batches

from connector.config import load_settings
from connector.dev.demo.processes import Processes, child_env
from connector.dev.local_postgres import LocalPostgres
from connector.ops.heap import collect_less
from connector.ops.signals import interrupt, stop_on_signals
from connector.records.model import HEARTBEAT_KIND, Change, StatusRecord
from connector.sinks.sql import SqlSink, sqlalchemy_url
from connector.site.runner import SitePoller, open_site_poller

#: (path, unit, raw figure, our figure)
Figure = tuple[str, str, float, float]


def best(
    rounds: int, ours: Callable[[int], float], raw: Callable[[int], float]
) -> tuple[float, float]:
    """The shortest seconds of each over `rounds` alternating runs."""
    mine, theirs = [], []
    for n in range(rounds):
        theirs.append(raw(n))
        mine.append(ours(n))
    return min(mine), min(theirs)


# -- 1. the producer path ----------------------------------------------------------------------


# -- 2. the SQL apply --------------------------------------------------------------------------

COLUMNS = (
    "site, kind, id, name, project_id, status, details, source_updated_at, observed_at, "
    "revision, sequence, deleted, applied_at"
)
#: The sink's rules, written by hand: a higher sequence wins, unchanged content is not rewritten.
CONFLICT = (
    "ON CONFLICT (site, kind, id) DO UPDATE SET name = excluded.name, "
    "project_id = excluded.project_id, status = excluded.status, details = excluded.details, "
    "source_updated_at = excluded.source_updated_at, observed_at = excluded.observed_at, "
    "revision = excluded.revision, sequence = excluded.sequence, deleted = excluded.deleted, "
    "applied_at = excluded.applied_at WHERE resource_status.sequence IS NULL "
    "OR (excluded.sequence > resource_status.sequence AND (resource_status.deleted "
    "OR excluded.status IS DISTINCT FROM resource_status.status "
    "OR excluded.name IS DISTINCT FROM resource_status.name "
    "OR excluded.project_id IS DISTINCT FROM resource_status.project_id "
    "OR excluded.details IS DISTINCT FROM resource_status.details))"
)
HEARTBEAT = (
    "INSERT INTO site_heartbeat (site, status, details, observed_at, sequence, applied_at) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (site) DO UPDATE SET status = excluded.status, "
    "details = excluded.details, observed_at = excluded.observed_at, "
    "sequence = excluded.sequence, applied_at = excluded.applied_at "
    "WHERE excluded.sequence > site_heartbeat.sequence"
)
STAGE_TYPES = [
    "text", "text", "text", "text", "text", "text", "text",
    "timestamptz", "timestamptz", "int8", "int8", "bool", "timestamptz",
]  # fmt: skip
STAGE = (
    "CREATE TEMPORARY TABLE stage ("
    + ", ".join(f"{c} {t}" for c, t in zip(COLUMNS.split(", "), STAGE_TYPES, strict=True))
    + ") ON COMMIT DELETE ROWS"
)
COPY = f"COPY stage ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
MERGE = (
    f"INSERT INTO resource_status ({COLUMNS}) SELECT site, kind, id, name, project_id, status, "
    "details::jsonb, source_updated_at, observed_at, revision, sequence, deleted, applied_at "
    f"FROM stage {CONFLICT}"
)
UNNEST = (
    f"INSERT INTO resource_status ({COLUMNS}) SELECT * FROM unnest(%s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[], %s::timestamptz[], "
    "%s::timestamptz[], %s::int8[], %s::int8[], %s::bool[], %s::timestamptz[]) "
    f"{CONFLICT}"
)
#: SQLite: the same upsert with qmark parameters (sqlite3's), times as SQLAlchemy stores them.
SQLITE_UPSERT = f"INSERT INTO resource_status ({COLUMNS}) VALUES ({', '.join('?' * 13)}) " + (
    CONFLICT.replace("details IS DISTINCT FROM resource_status.details", "details IS NOT "
                     "resource_status.details").replace("IS DISTINCT FROM", "IS NOT")
)  # fmt: skip
SQLITE_HEARTBEAT = HEARTBEAT.replace("%s", "?")


def sql_ours(url: str, batches: list[list[Change]]) -> float:
    sink = SqlSink(url)
    try:
        started = time.perf_counter()
        for batch in batches:
            sink.apply(batch)
        return time.perf_counter() - started
    finally:
        sink.close()


def raw_rows(
    batch: list[Change], now: Any, time_of: Callable[[datetime | None], Any]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The batch as (status rows, heartbeat rows): details as JSON text, times via `time_of`."""
    rows, beats = [], []
    for c in batch:
        assert isinstance(c, StatusRecord)
        details = json.dumps(dict(c.details))
        if c.kind == HEARTBEAT_KIND:
            beats.append((c.site, c.status, details, time_of(c.observed_at), c.sequence, now))
            continue
        rows.append(
            (
                c.site,
                c.kind,
                c.id,
                c.name,
                c.project_id,
                c.status,
                details,
                time_of(c.source_updated_at),
                time_of(c.observed_at),
                c.revision,
                c.sequence,
                False,
                now,
            )
        )
    return rows, beats


def same(value: datetime | None) -> datetime | None:
    return value


def sqlite_time(value: datetime | None) -> str | None:
    return None if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"


def pg_raw_copy(url: str, batches: list[list[Change]]) -> float:
    """Binary COPY into a temporary staging table and one merge per batch, psycopg 3 alone."""
    with psycopg.connect(url) as conn:
        conn.execute(STAGE)
        conn.commit()
        started = time.perf_counter()
        for batch in batches:
            rows, beats = raw_rows(batch, datetime.now(UTC), same)
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(COPY) as copy:
                    copy.set_types(STAGE_TYPES)
                    for row in rows:
                        copy.write_row(row)
                cur.execute(MERGE)
                cur.executemany(HEARTBEAT, beats)
        return time.perf_counter() - started


def pg_raw_unnest(url: str, batches: list[list[Change]]) -> float:
    """One INSERT ... SELECT FROM unnest(typed arrays) per batch, psycopg 3 alone."""
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for batch in batches:
            rows, beats = raw_rows(batch, datetime.now(UTC), same)
            columns = [list(column) for column in zip(*rows, strict=True)]
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(UNNEST, columns)
                cur.executemany(HEARTBEAT, beats)
        return time.perf_counter() - started


def sqlite_raw(path: str, batches: list[list[Change]]) -> float:
    """One prepared upsert stepped by sqlite3's executemany per batch (WAL, as the sink)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        started = time.perf_counter()
        for batch in batches:
            rows, beats = raw_rows(batch, sqlite_time(datetime.now(UTC)), sqlite_time)
            with conn:
                conn.executemany(SQLITE_UPSERT, rows)
                conn.executemany(SQLITE_HEARTBEAT, beats)
        return time.perf_counter() - started
    finally:
        conn.close()


def fresh_database(pg: LocalPostgres, name: str) -> str:
    """A new database with the sink's tables; its libpq URL."""
    admin = sa.create_engine(sqlalchemy_url(pg.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = pg.url.rsplit("/", 1)[0] + f"/{name}"
    SqlSink(url).close()  # the tables, as the sink makes them
    return url


def fresh_sqlite(workdir: Path, name: str) -> str:
    """A new SQLite file with the sink's tables; its path."""
    path = str(workdir / f"{name}.sqlite")
    SqlSink(f"sqlite:///{path}").close()
    return path


# -- 3. the poll cycle -------------------------------------------------------------------------


def capture(poller: SitePoller) -> list[tuple[str, dict[str, str]]]:
    """Start recording every request the site's sessions send: (URL, headers)."""
    sent: list[tuple[str, dict[str, str]]] = []

    def record(response: Any, *_args: Any, **_kwargs: Any) -> None:
        sent.append((response.request.url, dict(response.request.headers)))

    for kind_poller in poller.pollers:
        kind_poller.proxy.session.session.hooks["response"].append(record)
    return sent


def uncapture(poller: SitePoller) -> None:
    for kind_poller in poller.pollers:
        kind_poller.proxy.session.session.hooks["response"].pop()


def poll_raw(sent: list[tuple[str, dict[str, str]]]) -> float:
    session = requests.Session()
    started = time.perf_counter()
    for url, headers in sent:
        response = session.get(url, headers=headers, timeout=120)
        response.raise_for_status()
        response.json()
    session.close()
    return time.perf_counter() - started


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--records", type=int, help="producer records (default 100,000)")
    parser.add_argument("--rows", type=int, help="SQL rows (default 100,000 over 20,000 keys)")
    parser.add_argument("--servers", type=int)
    parser.add_argument("--volumes", type=int)
    parser.add_argument("--ports", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bootstrap", default=os.environ.get("CASCADE_KAFKA_BOOTSTRAP"))
    parser.add_argument("--kafka-port", type=int, default=9092)
    a = parser.parse_args()
    records = a.records or (20_000 if a.quick else 100_000)
    rows = a.rows or (20_000 if a.quick else 100_000)
    counts = {
        "servers": a.servers or (3000 if a.quick else 10_000),
        "volumes": a.volumes or (3000 if a.quick else 10_000),
        "ports": a.ports or (6000 if a.quick else 20_000),
    }
    print(machine())
    print(
        f"settings: {records:,} producer records, {rows:,} SQL rows in batches of 2,000 over "
        f"{rows // 5:,} keys, a site of {counts}, best of {a.rounds} rounds"
    )
    results: list[Figure] = []
    run_id = time.strftime("%Y%m%d%H%M%S")
    with broker(a.bootstrap, a.kafka_port) as bootstrap:
        prefix = f"ceilings.{run_id}"
        try:
            results.append(producer_pair(MOCK_BOOTSTRAP, prefix, records, a.rounds, MOCK))
            results.append(producer_pair(bootstrap, prefix, records, a.rounds, {}))
            results.append(poll_pair(bootstrap, prefix, counts, a.rounds))
        finally:
            # No "." after the prefix: the poller's lease topic is `<prefix>-lease.<site>`.
            drop_topics(bootstrap, prefix, print)
    results[2:2] = sql_pairs(rows, a.rounds)
    print(f"\nOurs against the raw ceiling, same machine, same run; {load()}")
    print(f"  {'path':<24} {'unit':<10} {'raw':>10} {'ours':>10} {'ours/raw':>9}")
    for path, unit, raw, ours in results:
        print(f"  {path:<24} {unit:<10} {raw:>10,.0f} {ours:>10,.0f} {ours / raw:>9.0%}")
    # The last lines, one per path the issue measures (issue 25), in a fixed form.
    figures = {path: (unit, raw, ours) for path, unit, raw, ours in results}
    for path, raw_name in (
        ("sql-apply postgresql", "raw set-based"),
        ("sql-apply sqlite", "raw"),
        ("producer", "raw"),
    ):
        unit, raw, ours = figures[path]
        print(f"{path}: ours {ours:,.0f} {unit}, {raw_name} {raw:,.0f} {unit} ({ours / raw:.0%})")


def producer_pair(
    bootstrap: str, prefix: str, n: int, rounds: int, extra: dict[str, str]
) -> Figure:
    where = "librdkafka's mock cluster" if extra else "the local broker"
    print(f"[1/3] producer path into {where}: {n:,} records; {load()}")
    sites = [f"ours{i}" for i in range(rounds)] + [f"raw{i}" for i in range(rounds)]
    if not extra:
        ensure_topics(bootstrap, prefix, sites)
    obs = observations(n)
    dicts = [avro_dict("raw", i + 1, o) for i, o in enumerate(obs)]
    # Both under the collector settings the poller runs with (`cascade-connector produce`):
    # at Python's default the path that allocates more pays for collections the product never
    # runs, and the ratio measured the collector.
    with collect_less():
        ours, raw = best(
            rounds,
            lambda r: producer_ours(bootstrap, f"{prefix}.ours{r}", "ours", obs, extra),
            lambda r: producer_raw(bootstrap, f"{prefix}.raw{r}", dicts, extra),
        )
    print(f"  raw {n / raw:,.0f} records/s, ours {n / ours:,.0f} records/s")
    return ("producer" if extra else "producer (local broker)", "records/s", n / raw, n / ours)


def sql_pairs(rows: int, rounds: int) -> list[Figure]:
    """Ours against the fastest raw set-based merge on PostgreSQL (binary COPY + merge, and
    unnest of typed arrays, both measured), and against raw sqlite3 executemany on SQLite."""
    print(f"[3/3] SQL apply: {rows:,} rows; {load()}")
    batches = make_batches(rows, rows // 5, 2000)
    n = sum(len(b) for b in batches)
    # Under the collector settings the consumer runs with, as the producer pair.
    with LocalPostgres(durable=True) as pg, collect_less():
        ours, copy = best(
            rounds,
            lambda r: sql_ours(fresh_database(pg, f"ours{r}"), batches),
            lambda r: pg_raw_copy(fresh_database(pg, f"copy{r}"), batches),
        )
        unnest = min(
            pg_raw_unnest(fresh_database(pg, f"unnest{r}"), batches) for r in range(rounds)
        )
    print(
        f"  postgresql: raw COPY + merge {n / copy:,.0f} rows/s, raw unnest {n / unnest:,.0f} "
        f"rows/s, ours {n / ours:,.0f} rows/s"
    )
    with tempfile.TemporaryDirectory(prefix="cascade-ceilings-") as tmp, collect_less():
        workdir = Path(tmp)
        lite_ours, lite_raw = best(
            rounds,
            lambda r: sql_ours(f"sqlite:///{fresh_sqlite(workdir, f'ours{r}')}", batches),
            lambda r: sqlite_raw(fresh_sqlite(workdir, f"raw{r}"), batches),
        )
    print(f"  sqlite: raw executemany {n / lite_raw:,.0f} rows/s, ours {n / lite_ours:,.0f} rows/s")
    return [
        ("sql-apply postgresql", "rows/s", n / min(copy, unnest), n / ours),
        ("sql-apply sqlite", "rows/s", n / lite_raw, n / lite_ours),
    ]


def poll_pair(bootstrap: str, prefix: str, counts: dict[str, int], rounds: int) -> Figure:
    objects = sum(counts.values())
    print(f"[2/3] poll cycle: a resync of {objects:,} objects; {load()}")
    workdir = Path(tempfile.mkdtemp(prefix="cascade-ceilings-"))
    procs = Processes(workdir, child_env({}))
    try:
        start_sims(procs, workdir, ["site-a"], counts)
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(workdir / "clouds-site-a.yaml")
        settings = load_settings(
            flags={
                "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix},
                "site": {"name": "site-a", "kinds": "server,volume,port"},
            }
        )
        with collect_less():
            poller = open_site_poller(settings)
            poller.cycle(resync=True)  # publishes everything: the measured cycles publish nothing
            poller.flush()
            replay = capture(poller)

            def ours(_round: int) -> float:
                started = time.perf_counter()
                poller.cycle(resync=True)
                return time.perf_counter() - started

            ours(0)  # the cycle whose requests the raw client repeats
            uncapture(poller)
            ours_s, raw_s = best(rounds, ours, lambda _r: poll_raw(replay))
            poller.flush()
    finally:
        procs.stop_all()
    print(f"  {len(replay)} requests; raw {raw_s:.2f} s, ours {ours_s:.2f} s per cycle")
    return ("poll cycle", "objects/s", objects / raw_s, objects / ours_s)


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process this started.
    with stop_on_signals(interrupt):
        main()
