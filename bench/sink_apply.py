"""Apply throughput of the SQL sink, in rows per second, on SQLite and PostgreSQL.

Feeds `--rows` status changes over `--keys` objects (with a heartbeat per batch, as a site sends)
to SqlSink.apply in batches of distinct keys, the way the top consumer hands them over, and times
the applies. Then replays the same batches (as after a crash): every change is older than what the
sink holds, so nothing is written, and that pass shows what a replay costs.

SQLite is a file in a temporary directory (WAL, default synchronous); PostgreSQL is a throwaway
local cluster with durable defaults (fsync and synchronous_commit on). Prints one line per run.

    .venv/bin/python bench/sink_apply.py [--rows 100000] [--keys 10000] [--batch-sizes 500,2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from connector.dev.local_postgres import LocalPostgres
from connector.records.model import Change, StatusRecord
from connector.sinks.sql import SqlSink, sqlalchemy_url

STATUSES = ["ACTIVE", "SHUTOFF", "ERROR", "BUILD", "REBOOT"]


def make_batches(rows: int, keys: int, batch_size: int, seed: int = 6) -> list[list[Change]]:
    """`rows` changes in batches of `batch_size` distinct keys, sequences growing, plus a
    heartbeat per batch."""
    rnd = random.Random(seed)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    sequence = 0
    batches: list[list[Change]] = []
    for start in range(0, rows, batch_size):
        batch: list[Change] = []
        for index in rnd.sample(range(keys), min(batch_size, rows - start, keys)):
            sequence += 1
            batch.append(
                StatusRecord(
                    site="bench",
                    kind="server",
                    id=f"{index:08d}-4c1e-9d8a-000000000000",
                    status=rnd.choice(STATUSES),
                    sequence=sequence,
                    observed_at=t0 + timedelta(milliseconds=sequence),
                    name=f"vm-{index}",
                    project_id="d3f1c2a49b8e4f6a8c7d5e4f3a2b1c0d",
                    details={
                        "vm_state": "active",
                        "task_state": None,
                        "power_state": 1,
                        "host": f"compute-{index % 50}",
                        "attachments": [f"vol-{index}"],
                    },
                    source_updated_at=t0 + timedelta(milliseconds=sequence),
                )
            )
        sequence += 1
        batch.append(StatusRecord("bench", "site", "bench", "ok", sequence, t0))
        batches.append(batch)
    return batches


def run(url: str, batches: list[list[Change]]) -> tuple[int, float, float]:
    """(rows written, seconds applying, seconds replaying) on a fresh database at `url`."""
    sink = SqlSink(url, on_delete="mark")
    try:
        started = time.perf_counter()
        written = sum(sink.apply(batch).written for batch in batches)
        applied = time.perf_counter() - started
        started = time.perf_counter()
        rewritten = sum(sink.apply(batch).written for batch in batches)
        replayed = time.perf_counter() - started
    finally:
        sink.close()
    if rewritten:
        raise AssertionError(f"a replay wrote {rewritten} rows: the sink regressed")
    return written, applied, replayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--batch-sizes", default="500,2000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    # The load average is printed because the figures move with whatever else shares the CPUs.
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"Python {platform.python_version()}; {args.rows} changes over {args.keys} keys"
    )
    print(f"{'backend':<11} {'batch':>6} {'rows':>7} {'apply s':>8} {'rows/s':>8} {'replay/s':>9}")
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres(durable=True) as pg:
        backends: dict[str, Callable[[int], str]] = {
            "sqlite": lambda n: f"sqlite:///{Path(tmp) / f'bench-{n}.sqlite'}",
            "postgresql": lambda n: _fresh_database(pg, f"bench_{n}"),
        }
        for name, new_url in backends.items():
            for size in sizes:
                batches = make_batches(args.rows, args.keys, size)
                changes = sum(len(b) for b in batches)
                written, applied, replayed = run(new_url(size), batches)
                print(
                    f"{name:<11} {size:>6} {written:>7} {applied:>8.2f} "
                    f"{written / applied:>8.0f} {changes / replayed:>9.0f}"
                )


def _fresh_database(pg: LocalPostgres, name: str) -> str:
    admin = sa.create_engine(sqlalchemy_url(pg.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


if __name__ == "__main__":
    main()
