"""Encode and decode throughput of the codec for a typical record, in records per second.

A typical record is a Nova server with the details the poller keeps (274 bytes encoded).
Single-object framing, the current schema; decode is measured for the current schema and for a
record written with the oldest shipped version (schema resolution on). Then the parts of a
decode, each alone, in microseconds per record: fastavro's reader, building the StatusRecord,
and its checks (what is left of a decode is the framing and the two times converted). One
process, one thread: the figure is per core.
Usage: `python bench/codec_throughput.py [--records N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

import fastavro

from connector.records.checks import record_problem
from connector.records.codec import SINGLE_OBJECT_MARKER, Codec
from connector.records.model import StatusRecord
from connector.records.schemas import current_schema, shipped_schemas

TYPICAL = StatusRecord(
    site="site-a",
    kind="server",
    id="8c1f7c6e-3b7a-4d6e-9a59-2f0c5d1e7a10",
    status="ACTIVE",
    sequence=1_234_567,
    observed_at=datetime(2025, 11, 25, 12, 30, 15, 123456, tzinfo=UTC),
    name="web-frontend-01",
    project_id="4f1c2b7e9d8a4c6b8e2f1a0d3c5b7e9f",
    details={
        "vm_state": "active",
        "task_state": None,
        "power_state": 1,
        "host": "compute-07.site-a",
        "flavor": "m1.medium",
        "locked": False,
        "addresses": ["10.0.0.5", "192.168.10.23"],
    },
    source_updated_at=datetime(2025, 11, 25, 12, 30, 12, tzinfo=UTC),
)


def _best_rate(func: Callable[[], object], records: int, rounds: int) -> float:
    """Records per second of the fastest of `rounds` runs of `records` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(records):
            func()
        best = min(best, time.perf_counter() - start)
    return records / best


def _oldest_version_value() -> bytes:
    """TYPICAL as a writer of the oldest shipped schema version would have encoded it."""
    oldest = shipped_schemas()[0]
    fields = {f["name"] for f in oldest.source["fields"]}
    out = io.BytesIO()
    out.write(SINGLE_OBJECT_MARKER + oldest.fingerprint)
    fastavro.schemaless_writer(
        out, oldest.parsed, {k: v for k, v in asdict(TYPICAL).items() if k in fields}
    )
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000, help="records per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the fastest counts")
    args = parser.parse_args()

    codec = Codec()
    value = codec.encode(TYPICAL)
    old_value = _oldest_version_value()
    assert codec.decode(value) == TYPICAL
    print(
        f"python {platform.python_version()}, fastavro {fastavro.__version__}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
    print(
        f"typical record: {len(value)} bytes single-object ({current_schema().file}); "
        f"{args.records} records x {args.rounds} rounds, best round counts"
    )
    rates = {
        "encode": _best_rate(lambda: codec.encode(TYPICAL), args.records, args.rounds),
        "decode": _best_rate(lambda: codec.decode(value), args.records, args.rounds),
        f"decode from {shipped_schemas()[0].file}": _best_rate(
            lambda: codec.decode(old_value), args.records, args.rounds
        ),
    }
    for what, rate in rates.items():
        print(f"{what:>28}: {rate:>10,.0f} records/s")
    body = value[len(SINGLE_OBJECT_MARKER + current_schema().fingerprint) :]
    plain = current_schema().plain  # what the codec reads with: times as plain longs
    fields = asdict(TYPICAL)
    parts = {
        "fastavro's reader": lambda: fastavro.schemaless_reader(io.BytesIO(body), plain, None),
        "the StatusRecord built": lambda: StatusRecord(**fields),
        "record_problem (from Avro)": lambda: record_problem(TYPICAL, from_avro=True),
    }
    print(f"{'decode':>28}: {1e6 / rates['decode']:>6.2f} us per record, of which")
    for what, run in parts.items():
        print(f"{what:>28}: {1e6 / _best_rate(run, args.records, args.rounds):>6.2f} us")


if __name__ == "__main__":
    main()
