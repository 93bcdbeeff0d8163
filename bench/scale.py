"""Many sites at once: N simulated sites of M objects, every site storming at the same time.

Starts N `cascade-connector sim` processes and a poller per site at once, then, for a consumer
group of 1, 2 and 3 members (a fresh group and a fresh PostgreSQL database each): the time until
the top layer first equals every site's truth (for the first group that includes the pollers'
initial sync; later groups catch up from Kafka), then a restart storm in every site at once and
the time until the top layer equals the truth again. Printed per group: those times, the
consumers' rows per second while catching up, the site API load (the sims' own counters) and
the peak RSS of each kind of process (VmHWM).

    .venv/bin/python bench/scale.py [--quick] [--sites 20] [--objects 10000] [--members 1,2,3]

The last line: `converged N sites x M objects after an all-site storm in S s` (the slowest group).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import sqlalchemy as sa
from common import (
    KINDS,
    bench_run,
    load,
    peak_rss_kib,
    start_consumer,
    start_sites,
    wait_answering,
    wait_converged,
    wait_storm_over,
)

from connector.dev.demo.observe import SiteCounters, scrape_total, truth
from connector.dev.demo.processes import Processes, http_json
from connector.dev.local_kafka import LocalKafka
from connector.dev.local_postgres import LocalPostgres
from connector.ops.signals import interrupt, stop_on_signals
from connector.sinks.sql import sqlalchemy_url


@dataclass
class Phase:
    members: int
    first: float
    storm_took: float
    after_storm: float
    rows_per_second: float
    site_requests: int
    site_bytes: int
    status_changes: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 sites of 1,000 objects")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--objects", type=int, help="per site (default 10,000; quick 1,000)")
    parser.add_argument("--members", default="1,2,3", help="consumer group sizes to run")
    parser.add_argument("--flaps", type=int, default=3)
    parser.add_argument("--storm-seconds", type=float, default=10.0)
    parser.add_argument("--changed", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, help="per convergence (default 600 s)")
    parser.add_argument("--bootstrap", default=os.environ.get("CASCADE_KAFKA_BOOTSTRAP"))
    parser.add_argument("--kafka-port", type=int, default=9092)
    a = parser.parse_args()
    objects = a.objects or (1000 if a.quick else 10_000)
    counts = {
        "servers": objects * 3 // 10,
        "volumes": objects * 3 // 10,
        "ports": objects - 2 * (objects * 3 // 10),
    }
    members = [int(m) for m in a.members.split(",")]
    timeout = a.timeout or (240.0 if a.quick else 900.0)
    settings = (
        f"{a.sites} sites x {objects:,} objects ({counts}), pollers every 10 s (defaults), "
        f"consumer groups of {members} members into PostgreSQL (durable), storm {a.flaps} flaps "
        f"within {a.storm_seconds:g} s in every site, {a.changed:.0%} to end changed"
    )
    phases: list[Phase] = []
    rss: dict[str, list[int]] = {"sim": [], "poller": [], "consumer": []}
    # PostgreSQL outside the run: the consumers writing to it are stopped before it is.
    with (
        LocalPostgres(durable=True) as pg,
        bench_run("scale", settings, a.bootstrap, a.kafka_port, print) as run,
    ):
        procs = run.procs
        names = [f"site-{i:02d}" for i in range(a.sites)]
        started = time.monotonic()
        print(f"[start] {a.sites} sims; {load()}")
        sims, pollers = start_sites(run, names, counts, timeout=600)
        print(f"  sims answering after {time.monotonic() - started:.1f} s; {load()}")
        wait_answering(procs, pollers, timeout=600)
        print(f"  pollers answering after {time.monotonic() - started:.1f} s; {load()}")
        for n in members:
            since = started if not phases else None
            phases.append(phase(n, a, procs, pg, sims, run.prefix, since, timeout, rss))
        rss["sim"] = [peak_rss_kib(p.pid) for p in procs.children("sim-")]
        rss["poller"] = [peak_rss_kib(p.pid) for p in procs.children("poller-")]
        broker_pid = LocalKafka(port=int(run.kafka.rsplit(":", 1)[1])).status().pid
        broker_rss = peak_rss_kib(broker_pid) if broker_pid else 0
    report(a.sites, objects, phases, rss, broker_rss)


def phase(
    members: int,
    a: argparse.Namespace,
    procs: Processes,
    pg: LocalPostgres,
    sims: dict[str, str],
    prefix: str,
    since: float | None,
    timeout: float,
    rss: dict[str, list[int]],
) -> Phase:
    print(f"[{members} member(s)] a fresh consumer group and database; {load()}")
    database = fresh_database(pg, f"top_{members}")
    metrics = [
        start_consumer(
            procs,
            f"consumer-{members}-{i}",
            sink=database,
            group=f"{prefix}.group{members}",
            dead_letter_topic=f"{prefix}.deadletter",
        )
        for i in range(members)
    ]
    begun = time.monotonic() if since is None else since
    wait_answering(procs, metrics, timeout=300)
    # Nothing changes at the sites while it converges, so the truth is read once per wait.
    site_before = SiteCounters.read(sims.values())
    first = wait_converged(database, truth(sims, KINDS), begun, timeout, procs.check_alive)
    rows = scrape_total(metrics, "cascade_consumer_rows_applied_total")
    rows_per_second = rows / first
    print(
        f"  first convergence after {first:.1f} s ({rows:,.0f} rows, {rows_per_second:,.0f} "
        f"rows/s); storm in every site; {load()}"
    )
    storm_at = time.monotonic()
    for url in sims.values():
        http_json(
            f"{url}/_sim/storm",
            {
                "flaps": a.flaps,
                "seconds": a.storm_seconds,
                "kinds": list(KINDS),
                "changed": a.changed,
            },
        )
    wait_storm_over(procs, sims, lambda: print(f"  storm under way; {load()}"), every=10)
    storm_took = time.monotonic() - storm_at
    print(f"  the storm took {storm_took:.1f} s; converging; {load()}")
    after = wait_converged(database, truth(sims, KINDS), storm_at, timeout, procs.check_alive)
    site = SiteCounters.read(sims.values()) - site_before
    print(f"  converged {after:.1f} s after the storm began; {load()}")
    rss["consumer"] += [peak_rss_kib(p.pid) for p in procs.children(f"consumer-{members}-")]
    procs.stop(f"consumer-{members}-")
    return Phase(
        members,
        first,
        storm_took,
        after,
        rows_per_second,
        site.requests,
        site.bytes_sent,
        site.status_changes,
    )


def fresh_database(pg: LocalPostgres, name: str) -> str:
    admin = sa.create_engine(sqlalchemy_url(pg.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def report(
    sites: int, objects: int, phases: list[Phase], rss: dict[str, list[int]], broker_rss: int
) -> None:
    print(f"\n{sites} sites x {objects:,} objects, every site storming at once; {load()}")
    head = (
        "members",
        "first sync",
        "rows/s",
        "storm took",
        "converged after storm",
        "status changes",
        "site API",
    )
    rows = [
        (
            str(p.members),
            f"{p.first:.1f} s",
            f"{p.rows_per_second:,.0f}",
            f"{p.storm_took:.1f} s",
            f"{p.after_storm:.1f} s",
            f"{p.status_changes:,}",
            f"{p.site_requests:,} req, {p.site_bytes / 1e6:,.0f} MB",
        )
        for p in phases
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print("  peak RSS (VmHWM):")
    for kind, values in rss.items():
        if values:
            print(
                f"    {kind:<9} max {max(values) / 1024:,.0f} MB, mean "
                f"{sum(values) / len(values) / 1024:,.0f} MB over {len(values)} processes"
            )
    if broker_rss:
        print(f"    {'broker':<9} {broker_rss / 1024:,.0f} MB (the JVM)")
    worst = max(p.after_storm for p in phases)
    print(f"converged {sites} sites x {objects} objects after an all-site storm in {worst:.1f} s")


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process this started.
    with stop_on_signals(interrupt):
        main()
