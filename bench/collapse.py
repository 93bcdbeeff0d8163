"""The collapse at the top (issue 10), full size: a storm backlog costs one write per key that
really changed, and the consumer's memory follows keys, not the backlog.

1. For SQLite and PostgreSQL (a throwaway local cluster, durable defaults): the sink holds
   `--keys` objects; a backlog of `--rounds` records per key (a storm: every key flapping, all
   within a few seconds of the site's time) ends with `--changed` keys different from what the
   sink holds. A fresh top consumer applies it at `--max-rate`. Prints rows written, changes
   handed to the sink, the most per second, the time, and whether the sink equals the last
   record per key.
2. RSS: `cascade-connector consume --until-idle` (a separate process) over `--rss-records`
   records of `--rss-keys` keys; prints its peak RSS (VmHWM) and that of an idle consumer.

    .venv/bin/python bench/collapse.py [--quick] [--bootstrap HOST:PORT]

The broker: `--bootstrap`, else CASCADE_KAFKA_BOOTSTRAP, else the local one is started.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from common import KAFKA_PORT, broker
from prometheus_client import CollectorRegistry

from connector.config import Settings, load_settings
from connector.dev.local_postgres import LocalPostgres
from connector.kafka.producer import Producer
from connector.kafka.topics import ensure_site_topic
from connector.records.codec import Codec
from connector.records.model import Change, StatusRecord
from connector.sinks import ApplyResult, open_sink
from connector.sinks.base import Progress, Sink, SiteAvailability, SitePartition
from connector.sinks.sql import create_engine
from connector.top.service import build_consumer

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SITE = "east"


class Counting:
    """A sink that counts what it was handed and what it wrote."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.handed = 0
        self.written = 0

    def apply(self, changes: Sequence[Change], progress: Progress | None = None) -> ApplyResult:
        result = self.sink.apply(changes, progress)
        self.handed += len(changes)
        self.written += result.written
        return result

    def stored_offsets(
        self, group: str, partitions: Collection[SitePartition]
    ) -> dict[SitePartition, int] | None:
        return self.sink.stored_offsets(group, partitions)

    def set_availability(self, states: Sequence[SiteAvailability]) -> None:
        self.sink.set_availability(states)

    def interrupt(self) -> None:
        self.sink.interrupt()

    def close(self) -> None:
        self.sink.close()


def record(key: int, seq: int, status: str) -> StatusRecord:
    return StatusRecord(
        site=SITE,
        kind="server",
        id=f"vm-{key}",
        status=status,
        sequence=seq,
        # A storm: the whole backlog within a few seconds of the site's time.
        observed_at=T0 + timedelta(microseconds=20 * seq),
        name=f"vm-{key}",
        project_id="p1",
        details={"vm_state": "active"},
    )


def backlog(keys: int, rounds: int, changed: int) -> Iterator[StatusRecord]:
    seq = keys + 1
    for r in range(1, rounds + 1):
        for key in range(keys):
            if r == rounds:
                status = "ERROR" if key < changed else "ACTIVE"
            else:
                status = ("SHUTOFF", "ERROR")[r % 2]
            yield record(key, seq, status)
            seq += 1


def publish(settings: Settings, records: Iterator[StatusRecord]) -> int:
    codec, producer = Codec(), Producer(settings.kafka)
    topic = f"{settings.kafka.topic_prefix}.{SITE}"
    failed: list[str] = []
    count = 0
    for change in records:
        producer.produce(
            topic,
            key=change.key,
            value=codec.encode(change),
            on_delivery=lambda key, err, _p, _o: failed.append(key) if err else None,
        )
        count += 1
    producer.flush(120)
    if failed:
        raise SystemExit(f"{len(failed)} records not delivered")
    return count


def settings_for(bootstrap: str, url: str, **consumer: object) -> Settings:
    run = uuid.uuid4().hex[:8]
    return load_settings(
        flags={
            "kafka": {"bootstrap": bootstrap, "topic_prefix": f"bench.collapse.{run}"},
            "sink": {"url": url},
            "consumer": {
                "group": f"bench-collapse-{run}",
                "dead_letter_topic": f"bench.collapse-dlq.{run}",
                **consumer,
            },
        }
    )


def collapse(bootstrap: str, url: str, args: argparse.Namespace) -> None:
    settings = settings_for(bootstrap, url, max_rate=args.max_rate)
    ensure_site_topic(settings.kafka, SITE)
    held = open_sink(settings.sink)
    initial = [record(k, k + 1, "ACTIVE") for k in range(args.keys)]
    for i in range(0, len(initial), 2000):
        held.apply(initial[i : i + 2000])
    held.close()
    started = time.monotonic()
    published = publish(settings, backlog(args.keys, args.rounds, args.changed))
    print(f"  published {published:,} records in {time.monotonic() - started:.1f} s")
    sink = Counting(open_sink(settings.sink))
    loop = build_consumer(settings, sink, CollectorRegistry())
    started = time.monotonic()
    loop.run(until_idle=True)
    elapsed = time.monotonic() - started
    sink.close()
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status FROM resource_status")).all()
        state = {row.id: row.status for row in rows}
    engine.dispose()
    expected = {f"vm-{k}": "ERROR" if k < args.changed else "ACTIVE" for k in range(args.keys)}
    print(
        f"  rows written {sink.written:,} (limit {int(args.changed * 1.1):,}), changes handed "
        f"{sink.handed:,}, most in 1 s {loop.max_per_second:,} (rate {args.max_rate:,.0f}/s), "
        f"{elapsed:.1f} s to apply and commit; sink equals the last record per key: "
        f"{state == expected}"
    )


def peak_rss(bootstrap: str, records: int, keys: int, workdir: Path) -> None:
    """Peak RSS of a consumer process over a backlog (`records` of `keys` keys, a storm), and
    of one with nothing to read."""
    for n in (records, 0):
        url = f"sqlite:///{workdir / f'rss-{n}.sqlite'}"
        settings = settings_for(bootstrap, url, max_rate=20_000.0)
        ensure_site_topic(settings.kafka, SITE)
        if n:
            publish(settings, backlog(keys, n // keys, 0))
        env = {
            **os.environ,
            "CASCADE_KAFKA_BOOTSTRAP": bootstrap,
            "CASCADE_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "CASCADE_CONSUMER_GROUP": settings.consumer.group,
            "CASCADE_CONSUMER_DEAD_LETTER_TOPIC": settings.consumer.dead_letter_topic,
            "CASCADE_SINK_URL": url,
        }
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector", "consume", "--until-idle", "--max-rate", "20000"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        peak = [0]
        watcher = threading.Thread(target=_watch_peak, args=(proc, peak))
        watcher.start()
        try:
            _out, err = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            watcher.join()
        if proc.returncode:
            raise SystemExit(f"consumer failed: {err.decode()[-2000:]}")
        what = f"{n:,} records over {keys:,} keys" if n else "nothing to read"
        print(
            f"  {what}: peak RSS {peak[0] / 1024:,.0f} MB, "
            f"{time.monotonic() - started:.1f} s to apply"
        )


def _watch_peak(proc: subprocess.Popen[bytes], peak: list[int]) -> None:
    """Keep the process's peak RSS (VmHWM, kB) in `peak[0]` until it exits."""
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    parser.add_argument("--bootstrap", default=os.environ.get("CASCADE_KAFKA_BOOTSTRAP"))
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--changed", type=int, default=2_000)
    parser.add_argument("--max-rate", type=float, default=1000.0)
    parser.add_argument("--rss-records", type=int, default=1_000_000)
    parser.add_argument("--rss-keys", type=int, default=100_000)
    parser.add_argument("--only", choices=["collapse", "rss"], default=None)
    args = parser.parse_args()
    if args.quick:
        args.keys, args.changed = args.keys // 10, args.changed // 10
        args.rss_records, args.rss_keys = args.rss_records // 10, args.rss_keys // 10
    # The broker named, else a local one on the default port: stopped by its pid at the end if
    # this bench started it (one already running is used and left running).
    with broker(args.bootstrap, KAFKA_PORT) as bootstrap:
        print(
            f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        print(
            f"backlog: {args.keys * args.rounds:,} records over {args.keys:,} keys, "
            f"{args.changed:,} ending changed; --max-rate {args.max_rate:,.0f}"
        )
        with tempfile.TemporaryDirectory(prefix="cascade-collapse-") as tmp:
            workdir = Path(tmp)
            if args.only != "rss":
                print("SQLite:")
                collapse(bootstrap, f"sqlite:///{workdir / 'top.sqlite'}", args)
                with LocalPostgres(durable=True) as postgres:
                    print("PostgreSQL:")
                    collapse(bootstrap, postgres.url, args)
            if args.only != "collapse":
                print("consumer memory:")
                peak_rss(bootstrap, args.rss_records, args.rss_keys, workdir)


if __name__ == "__main__":
    main()
