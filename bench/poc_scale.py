"""The seed's own test on one machine (issue 24): 100 sites of 10,000 servers, 10,000 ports and
3,000 volumes, every component real, through five phases.

A private Kafka on a free port (never the shared broker), a PostgreSQL with durable defaults,
simulated sites served `--sites-per-sim` to a `cascade-connector sim` process (each site with its
own Keystone, catalog and port, spoken to by unmodified openstacksdk), one real
`cascade-connector produce` per site, and a top consumer group into PostgreSQL:

1. start everything with one consumer member; initial sync until the top equals every site's
   truth;
2. steady churn of `--churn-rate` changes/s spread over all sites for `--churn-seconds`: p50 and
   p99 of the delay from a change (the object's updated time at the site, whole seconds as
   Nova's) to its row (the row's applied_at);
3. a restart storm in `--storm-sites` sites at once (every object flaps `--flaps` times within
   `--storm-seconds`, `--changed` of them end changed) while the other sites keep churning at
   the same per-site rate: time to converge after the storm ended, rows and calls at the top,
   and the quiet sites' p50/p99 during it;
4. a second member joins; the same storm in another `--storm-sites` sites, and one member is
   SIGKILLed halfway through the storm: the group still converges, and a trigger on the table
   records any row that went back to an older sequence (there must be none);
5. `--quiet-seconds` of quiet.

Every phase prints a table: its own figures, CPU seconds and peak RSS (sampled VmRSS) per kind
of process (sim, poller, consumer, broker, postgres), site API requests and bytes, broker disk.
A plot over time (site changes/s, rows/s at the top, consumer lag) goes to
docs/img/poc-scale[-quick].png. Every process is stopped by its pid at the end, on failure too.

    .venv/bin/python bench/poc_scale.py --quick        # 100 sites x 300 / 300 / 100
    .venv/bin/python bench/poc_scale.py [--sites 100] [--servers 10000] [--ports 10000] \
        [--volumes 3000]

The last line: `poc-scale: N sites, M objects: synced in S s, storm converged T s after it ended,
steady p99 P s, consumer peak R MB`.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
import yaml
from common import (
    IMG,
    KINDS,
    Members,
    PhaseResult,
    Run,
    Usage,
    bench_run,
    disk_bytes,
    ensure_topics,
    fmt_delays,
    load,
    pct,
    plot_timeline,
    print_phase,
    quiet_port,
    run_phase,
    service_pids,
    sink_delays,
    start_pollers,
    storm_over,
    wait_answering,
    wait_converged,
)

from connector.dev.chaos.harness import watch_regressions
from connector.dev.demo.observe import SiteCounters, truth
from connector.dev.demo.processes import Processes, http_json, wait_until
from connector.dev.demo.run import flags
from connector.dev.local_kafka import LocalKafka
from connector.dev.local_postgres import LocalPostgres
from connector.ops.signals import interrupt, stop_on_signals
from connector.sinks.sql import create_engine

SAMPLE_SECONDS = 2.0
PROCESS_KINDS = ("sim", "poller", "consumer", "broker", "postgres")
#: Consumer counters a phase reports as differences (a killed member's last count stays in).
ROWS = "cascade_consumer_rows_applied_total"
LAG = "cascade_consumer_lag_records"
COUNTED = (ROWS, "cascade_consumer_batches_total")


@dataclass
class Timeline:
    """What the sampler saw, for the plot: (seconds since start, value) per series."""

    changes: list[tuple[float, float]] = field(default_factory=list)
    rows: list[tuple[float, float]] = field(default_factory=list)
    lag: list[tuple[float, float]] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)


class Bench:
    def __init__(self, a: argparse.Namespace, run: Run, pg: LocalPostgres) -> None:
        self.a = a
        self.run = run
        self.procs: Processes = run.procs
        self.pg = pg
        self.started = time.monotonic()
        self.sites = [f"site-{i:03d}" for i in range(a.sites)]
        self.sims: dict[str, str] = {}
        self.sink_url = pg.url
        self.members = Members(
            self.procs,
            a.timeout,
            sink=self.sink_url,
            group=f"{run.prefix}.group",
            dead_letter_topic=f"{run.prefix}.deadletter",
        )
        self.steady_p99 = self.storm_after = float("nan")
        self.usage = Usage()
        self.timeline = Timeline()
        self.results: list[PhaseResult] = []
        self.broker = LocalKafka(port=int(run.kafka.rsplit(":", 1)[1]))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

    # -- sampling --------------------------------------------------------------------------

    def pids(self) -> dict[str, list[int]]:
        out = {kind: [p.pid for p in self.procs.children(f"{kind}-")] for kind in PROCESS_KINDS}
        return {**out, **service_pids(self.broker, self.pg)}

    def _sample_loop(self) -> None:
        last: tuple[float, float, float] | None = None
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                with self._lock:
                    self.usage.sample(self.pids())
                now = time.monotonic() - self.started
                changes = float(SiteCounters.read(self.sims.values()).status_changes)
                totals = self.members.totals((ROWS, LAG))
                rows, lag = totals[ROWS], totals[LAG]
            except OSError:
                continue  # a consumer being killed or restarted; the next sample counts
            if last is not None:
                dt = now - last[0]
                self.timeline.changes.append((now, max(0.0, changes - last[1]) / dt))
                self.timeline.rows.append((now, max(0.0, rows - last[2]) / dt))
            self.timeline.lag.append((now, lag))
            last = (now, changes, rows)

    # -- phases ----------------------------------------------------------------------------

    def phase(self, name: str, body: Callable[[], list[tuple[str, str]]]) -> None:
        self.timeline.marks.append((time.monotonic() - self.started, name.split(" ")[0]))
        site_before = SiteCounters.read(self.sims.values()) if self.sims else SiteCounters()
        result = run_phase(name, body, self.usage, self._lock, self.pids)
        site = SiteCounters.read(self.sims.values()) - site_before
        result.extra = [
            ("site API requests, bytes", f"{site.requests:,}, {site.bytes_sent / 1e6:,.1f} MB"),
            ("broker disk", f"{disk_bytes(self.broker.home) / 1e6:,.1f} MB"),
        ]
        self.results.append(result)
        print_phase(result, PROCESS_KINDS)

    def start_everything(self) -> list[tuple[str, str]]:
        a = self.a
        counts = {"servers": a.servers, "volumes": a.volumes, "ports": a.ports}
        clouds: dict[str, Path] = {}
        for k in range(0, len(self.sites), a.sites_per_sim):
            chosen = self.sites[k : k + a.sites_per_sim]
            path = self.run.workdir / f"clouds-sim-{k // a.sites_per_sim}.yaml"
            self.procs.start(
                f"sim-{k // a.sites_per_sim}",
                "sim",
                *(f"--site={s}" for s in chosen),
                *flags(listen="127.0.0.1:0", seed=k, write_clouds_yaml=path, **counts),
            )
            clouds.update(dict.fromkeys(chosen, path))
        for path in sorted(set(clouds.values())):
            wait_until(f"{path.name}", path.exists, a.timeout, self.procs.check_alive)
            for site, entry in yaml.safe_load(path.read_text())["clouds"].items():
                self.sims[site] = entry["auth"]["auth_url"].removesuffix("/identity")
        sims_at = time.monotonic() - self.started
        print(f"  {len(self.sims)} sites answering after {sims_at:.1f} s; {load()}")
        ensure_topics(self.run.kafka, f"{self.run.prefix}.status", self.sites)
        watch_regressions(self.sink_url)
        self._sampler.start()
        pollers = start_pollers(
            self.procs, self.run.workdir, self.sites, clouds, kinds=",".join(KINDS)
        )
        self.add_consumer()
        wait_answering(self.procs, pollers, timeout=a.timeout)
        pollers_at = time.monotonic() - self.started
        print(f"  {len(pollers)} pollers answering after {pollers_at:.1f} s; {load()}")
        synced = self.converge(self.sites, self.started)
        return [
            ("sites answering (s after start)", f"{sims_at:.1f}"),
            ("pollers answering (s after start)", f"{pollers_at:.1f}"),
            ("top equals every site's truth (s after start)", f"{synced:.1f}"),
            ("objects", f"{len(self.sites) * (a.servers + a.volumes + a.ports):,}"),
        ]

    def add_consumer(self) -> None:
        self.members.add()

    def churn(self, sites: list[str], seconds: float) -> datetime:
        per_site = self.a.churn_rate / len(self.sites)
        for site in sites:
            http_json(f"{self.sims[site]}/_sim/churn", {"rate": per_site, "seconds": seconds})
        return datetime.now(UTC).replace(microsecond=0)

    def steady(self) -> list[tuple[str, str]]:
        a = self.a
        since = self.churn(self.sites, a.churn_seconds)
        self.wait_jobs(self.sites, a.churn_seconds + 60)
        # The last changes need a poll and a window to arrive.
        self.converge(self.sites, time.monotonic())
        delays = self.delays(self.sites, since)
        self.steady_p99 = pct(delays, 0.99)
        return [
            ("changes/s over all sites", f"{a.churn_rate:g} for {a.churn_seconds:g} s"),
            ("change-to-row delay p50 / p99 / max", fmt_delays(delays)),
            ("bound (poll interval + 3 s)", f"{a.interval + 3:g} s"),
        ]

    def storm(self, storming: list[str], kill: bool) -> list[tuple[str, str]]:
        a = self.a
        quiet = [s for s in self.sites if s not in storming]
        before = self.members.totals(COUNTED)
        since = self.churn(quiet, a.storm_seconds + a.churn_after)
        storm_at = time.monotonic()
        for site in storming:
            http_json(
                f"{self.sims[site]}/_sim/storm",
                {
                    "flaps": a.flaps,
                    "seconds": a.storm_seconds,
                    "kinds": list(KINDS),
                    "changed": a.changed,
                },
            )
        killed = ""
        if kill:
            time.sleep(a.storm_seconds / 2)  # halfway through the storm, by design
            name = sorted(self.members.urls)[0]
            victim = self.procs.children(name)[0]
            self.members.retire(name, COUNTED)
            victim.kill()
            victim.wait()
            self.procs.stop(name)
            killed = f"{name} SIGKILLed {time.monotonic() - storm_at:.1f} s into the storm"
            print(f"  {killed}")
        self.wait_jobs(storming, a.storm_seconds + 120)
        ended = time.monotonic()
        after = self.converge(storming, ended)
        # Rows after the storm count too: the quiet sites' churn outlasts the convergence.
        after_counts = self.members.totals(COUNTED)
        rows, calls = (after_counts[m] - before[m] for m in COUNTED)
        delays = self.delays(quiet, since)
        if not kill:
            self.storm_after = after
        out = [
            ("storming sites", f"{len(storming)} ({storming[0]} ...)"),
            ("storm took (s)", f"{ended - storm_at:.1f}"),
            ("converged after the storm ended (s)", f"{after:.1f}"),
            ("rows / calls at the top (while there)", f"{rows:,.0f} / {calls:,.0f}"),
            ("quiet sites' delay p50 / p99 / max", fmt_delays(delays)),
        ]
        if kill:
            regressions = self.regressions()
            out += [("member killed", killed), ("rows gone back to an older sequence", regressions)]
        self.wait_jobs(quiet, a.storm_seconds + a.churn_after + 60)
        return out

    def join_second(self) -> list[tuple[str, str]]:
        began = time.monotonic()
        self.add_consumer()
        # Settled: both members report lag (own partitions) and the top still follows churn.
        self.churn(self.sites, 5)
        self.wait_jobs(self.sites, 65)
        self.converge(self.sites, began)
        return [("joined and caught up with a churn (s)", f"{time.monotonic() - began:.1f}")]

    def quiet(self) -> list[tuple[str, str]]:
        time.sleep(self.a.quiet_seconds)  # the phase is a length of time at rest, by design
        return [("seconds at rest", f"{self.a.quiet_seconds:g}")]

    # -- observation -----------------------------------------------------------------------

    def converge(self, sites: list[str], since: float) -> float:
        """Seconds from `since` until the sink equals the truth of `sites` (read once: nothing
        changes there while this waits)."""
        expected = truth({s: self.sims[s] for s in sites}, KINDS)
        return wait_converged(
            self.sink_url, expected, since, self.a.timeout, self.procs.check_alive, every=15
        )

    def wait_jobs(self, sites: list[str], timeout: float) -> None:
        chosen = {s: self.sims[s] for s in sites}
        wait_until("the sites' churn and storms to end", lambda: storm_over(chosen), timeout,
                   self.procs.check_alive)  # fmt: skip

    def delays(self, sites: list[str], since: datetime) -> list[float]:
        """Change-to-row delays of the rows of `sites` holding a change made since `since`."""
        return sink_delays(self.sink_url, sites, since, "source_updated_at")

    def regressions(self) -> str:
        engine = create_engine(self.sink_url)
        try:
            with engine.connect() as conn:
                n = conn.execute(sa.text("SELECT count(*) FROM regressions")).scalar_one()
        finally:
            engine.dispose()
        return f"{n} (trigger on resource_status)"

    def finish(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 sites x 300 / 300 / 100")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--servers", type=int)
    parser.add_argument("--ports", type=int)
    parser.add_argument("--volumes", type=int)
    parser.add_argument("--sites-per-sim", type=int, default=25)
    parser.add_argument("--churn-rate", type=float, default=1000.0, help="changes/s, all sites")
    parser.add_argument("--churn-seconds", type=float, help="default 120, quick 30")
    parser.add_argument("--storm-sites", type=int, default=10)
    parser.add_argument("--flaps", type=int, default=3)
    parser.add_argument("--storm-seconds", type=float, default=10.0)
    parser.add_argument("--changed", type=float, default=0.05)
    parser.add_argument(
        "--churn-after", type=float, default=30.0, help="s the quiet sites churn after a storm"
    )
    parser.add_argument("--quiet-seconds", type=float, help="default 60, quick 20")
    parser.add_argument("--interval", type=float, default=10.0, help="the pollers' default")
    parser.add_argument("--timeout", type=float, default=900.0, help="per wait")
    a = parser.parse_args()
    a.servers = a.servers if a.servers is not None else (300 if a.quick else 10_000)
    a.ports = a.ports if a.ports is not None else (300 if a.quick else 10_000)
    a.volumes = a.volumes if a.volumes is not None else (100 if a.quick else 3_000)
    a.churn_seconds = a.churn_seconds or (30.0 if a.quick else 120.0)
    a.quiet_seconds = a.quiet_seconds or (20.0 if a.quick else 60.0)
    objects = a.sites * (a.servers + a.ports + a.volumes)
    settings = (
        f"{a.sites} sites x {a.servers:,} servers / {a.ports:,} ports / {a.volumes:,} volumes "
        f"({objects:,} objects), {a.sites_per_sim} sites per sim process, pollers with defaults "
        f"(interval {a.interval:g} s), a private broker, PostgreSQL durable; churn "
        f"{a.churn_rate:g}/s for {a.churn_seconds:g} s; storms in {a.storm_sites} sites "
        f"({a.flaps} flaps in {a.storm_seconds:g} s, {a.changed:.0%} end changed); quiet "
        f"{a.quiet_seconds:g} s"
    )
    storming = a.sites if a.storm_sites * 2 > a.sites else a.storm_sites
    # PostgreSQL outside the run: the consumers writing to it are stopped before it is.
    with (
        LocalPostgres(durable=True) as pg,
        bench_run("poc", settings, None, quiet_port(), print) as run,
    ):
        bench = Bench(a, run, pg)
        try:
            bench.phase("1 start and initial sync", bench.start_everything)
            bench.phase("2 steady churn", bench.steady)
            first = bench.sites[:storming]
            bench.phase("3 storm, 1 member", lambda: bench.storm(first, kill=False))
            bench.phase("member joins", bench.join_second)
            second = bench.sites[-storming:]
            bench.phase("4 storm, 2 members, one SIGKILLed", lambda: bench.storm(second, True))
            bench.phase("5 quiet", bench.quiet)
        finally:
            bench.finish()
        consumer_peak = max(r.peaks.get("consumer", (0, 0))[0] for r in bench.results) / 1024
        plot_timeline(
            IMG / ("poc-scale-quick.png" if a.quick else "poc-scale.png"),
            f"poc-scale: {settings}",
            {
                "site changes/s": bench.timeline.changes,
                "rows/s at the top": bench.timeline.rows,
                "consumer lag (records)": bench.timeline.lag,
            },
            bench.timeline.marks,
        )
    synced = bench.results[0].figures[2][1]
    print(
        f"poc-scale: {a.sites} sites, {objects} objects: synced in {synced} s, storm converged "
        f"{bench.storm_after:.1f} s after it ended, steady p99 {bench.steady_p99:.1f} s, "
        f"consumer peak {consumer_peak:.0f} MB"
    )


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process this started.
    with stop_on_signals(interrupt):
        main()
