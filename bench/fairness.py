"""Fair share at the top (issue 18): one site storms, the others carry on and stay fresh.

Starts real processes as the demo does (local Kafka, simulated sites, a poller per site, one top
consumer into SQLite): site-a with `--storm-objects` objects, every other site with
`--quiet-objects`, all polled every `--interval` s, the consumer limited to `--max-rate`. Once the
sink equals the truth, every quiet site changes `--quiet-rate` objects a second; a few seconds
later site-a storms (every object flaps `--storm-flaps` times within `--storm-seconds`).

Prints, per phase (before the storm, during it until site-a converged again): the quiet sites'
delay from a change at the site (the object's own updated time) to its row at the top (the row's
applied_at), p50 and p99; site-a's time to converge; the most changes the top layer took in one
second; the oldest pending change per site as the consumer reported it; and whether the sink
equals every site's truth at the end. `--all-storm` storms every site at once instead.

    .venv/bin/python bench/fairness.py [--quick] [--sites 20] [--all-storm]

The sites' timestamps have one-second resolution (as Nova's), so a delay reads up to 1 s long.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from common import KAFKA_PORT, broker

from connector.dev import free_port
from connector.dev.demo.observe import SinkReader, compare, metric_total, truth
from connector.dev.demo.processes import Processes, child_env, http_json, http_text, wait_until
from connector.dev.demo.run import KINDS, flags
from connector.sinks.sql import create_engine, resource_status

SAMPLE_SECONDS = 0.5
RESYNC_SECONDS = 20.0
#: Seconds the quiet sites keep changing after the storm's own seconds.
CHURN_AFTER = 40.0


def sizes(objects: int) -> dict[str, int]:
    """Servers, volumes and ports in the demo's proportions (1:1:2)."""
    return {"servers": objects // 4, "volumes": objects // 4, "ports": objects // 2}


class Scenario:
    def __init__(self, args: argparse.Namespace, workdir: Path, bootstrap: str) -> None:
        self.args = args
        self.workdir = workdir
        run = uuid.uuid4().hex[:8]
        self.prefix = f"bench.fair.{run}.status"
        self.dead_letters = f"bench.fair.{run}.deadletter"
        self.group = f"bench-fair-{run}"
        self.sink_url = f"sqlite:///{workdir / 'top.sqlite'}"
        self.procs = Processes(
            workdir,
            child_env(
                {"CASCADE_KAFKA_BOOTSTRAP": bootstrap, "CASCADE_KAFKA_TOPIC_PREFIX": self.prefix}
            ),
        )
        self.sims: dict[str, str] = {}
        self.metrics = ""
        self.churn_started = datetime.now(UTC)

    def start(self) -> None:
        a = self.args
        names = [f"site-{chr(ord('a') + i)}" if i < 26 else f"site-{i}" for i in range(a.sites)]
        for i, site in enumerate(names):
            port = free_port()
            self.sims[site] = f"http://127.0.0.1:{port}"
            objects = a.storm_objects if i == 0 else a.quiet_objects
            self.procs.start(
                f"sim-{site}",
                "sim",
                *flags(
                    site=site,
                    listen=f"127.0.0.1:{port}",
                    seed=i,
                    write_clouds_yaml=self.workdir / f"clouds-{site}.yaml",
                    **sizes(objects),
                ),
            )
        for site, url in self.sims.items():
            wait_until(site, partial(http_json, f"{url}/_sim/info"), 180, self.procs.check_alive)
            clouds = self.workdir / f"clouds-{site}.yaml"
            wait_until(f"{site} clouds.yaml", clouds.exists, 30, self.procs.check_alive)
        for site in self.sims:
            self.procs.env["OS_CLIENT_CONFIG_FILE"] = str(self.workdir / f"clouds-{site}.yaml")
            self.procs.start(
                f"poller-{site}",
                "produce",
                # Deleted volumes become tombstones only at a resync: keep it short.
                *flags(
                    site=site,
                    interval=a.interval,
                    kinds=",".join(KINDS),
                    resync_interval=RESYNC_SECONDS,
                ),
            )
        port = free_port()
        self.metrics = f"http://127.0.0.1:{port}/metrics"
        self.procs.start(
            "consumer",
            "consume",
            *flags(
                sink=self.sink_url,
                group=self.group,
                dead_letter_topic=self.dead_letters,
                max_rate=a.max_rate,
                metrics_port=port,
            ),
        )
        wait_until("consumer metrics", partial(http_text, self.metrics), 60, self.procs.check_alive)

    def converged(self, sink: SinkReader, sites: list[str] | None = None) -> bool:
        chosen = {s: u for s, u in self.sims.items() if sites is None or s in sites}
        actual = {k: v for k, v in sink.statuses().items() if k[0] in chosen}
        return compare(truth(chosen, KINDS), actual).equal

    def run(self) -> None:
        a = self.args
        sink = SinkReader(self.sink_url)
        engine = create_engine(self.sink_url)
        try:
            started = time.monotonic()
            wait_until("initial sync", lambda: self.converged(sink), 900, self.procs.check_alive)
            print(f"initial sync of {len(self.sims)} sites: {time.monotonic() - started:.1f} s")
            stormers = list(self.sims) if a.all_storm else ["site-a"]
            quiet = [s for s in self.sims if s not in stormers]
            churn = a.baseline + a.storm_seconds + CHURN_AFTER
            for site in quiet:
                http_json(f"{self.sims[site]}/_sim/churn", {"rate": a.quiet_rate, "seconds": churn})
            since = self.churn_started = datetime.now(UTC)
            delays: dict[str, list[float]] = {"before": [], "storm": []}
            oldest: dict[str, float] = {}
            most = 0.0
            phase_end = time.monotonic() + a.baseline
            phase = "before"
            storm_started = 0.0
            converged_after = None
            while True:
                self.procs.check_alive()
                since = self._sample(engine, quiet, since, delays[phase])
                text = http_text(self.metrics)
                most = max(most, metric_total(text, "cascade_consumer_records_max_per_second"))
                for site in self.sims:
                    age = metric_total(
                        text, "cascade_consumer_site_oldest_pending_seconds", site=site
                    )
                    oldest[site] = max(oldest.get(site, 0.0), age)
                now = time.monotonic()
                if phase == "before" and now >= phase_end:
                    phase, storm_started = "storm", now
                    for site in stormers:
                        http_json(
                            f"{self.sims[site]}/_sim/storm",
                            {
                                "flaps": a.storm_flaps,
                                "seconds": a.storm_seconds,
                                "kinds": list(KINDS),
                                "changed": a.storm_changed,
                            },
                        )
                    oldest = {}
                elif (
                    phase == "storm"
                    and now - storm_started > a.storm_seconds
                    and self.converged(sink, stormers)
                ):
                    converged_after = now - storm_started
                    break
                elif phase == "storm" and now - storm_started > a.timeout:
                    break
                time.sleep(SAMPLE_SECONDS)
            for site in quiet:

                def churned(url: str = self.sims[site]) -> bool:
                    return not http_json(f"{url}/_sim/stats")["background_jobs"]

                wait_until(
                    f"{site}'s churn to end",
                    churned,
                    churn + 60,
                    self.procs.check_alive,
                )
            equal = False
            deadline = time.monotonic() + RESYNC_SECONDS + 120
            while time.monotonic() < deadline and not equal:
                equal = self.converged(sink)
                time.sleep(1)
            self._report(delays, oldest, most, converged_after, stormers, equal)
        finally:
            sink.close()
            engine.dispose()

    def _sample(
        self, engine: sa.Engine, sites: list[str], since: datetime, out: list[float]
    ) -> datetime:
        """Delays of the quiet sites' rows applied since `since`; returns the newest applied_at."""
        if not sites:
            return since
        rs = resource_status
        # Through the table, so both databases hand back datetimes.
        query = sa.select(rs.c.site, rs.c.source_updated_at, rs.c.applied_at).where(
            rs.c.applied_at > since,
            rs.c.source_updated_at.is_not(None),
            rs.c.kind != "site",
            # A deletion marks the row and stamps applied_at, but keeps the last state and its
            # source time: counted, it read as a delay from that older change.
            sa.not_(rs.c.deleted),
        )
        newest = since
        with engine.connect() as conn:
            for row in conn.execute(query):
                if row.site not in sites:
                    continue
                applied, changed = _utc(row.applied_at), _utc(row.source_updated_at)
                newest = max(newest, applied)
                # Only changes the churn made; a row written for an older change (a resync
                # after a deletion, say) says nothing of the delay.
                if changed >= self.churn_started.replace(microsecond=0):
                    out.append((applied - changed).total_seconds())
        return newest

    def _report(
        self,
        delays: dict[str, list[float]],
        oldest: dict[str, float],
        most: float,
        converged_after: float | None,
        stormers: list[str],
        equal: bool,
    ) -> None:
        a = self.args
        bound = a.interval + 3.0
        print(
            f"\n{len(self.sims)} sites; storming: {', '.join(stormers)} "
            f"({a.storm_objects if not a.all_storm else 'all'} objects, {a.storm_flaps} flaps in "
            f"{a.storm_seconds:g} s); quiet sites change {a.quiet_rate:g} objects/s; polls every "
            f"{a.interval:g} s; --max-rate {a.max_rate:g}"
        )
        for phase, values in delays.items():
            if values:
                q = statistics.quantiles(values, n=100)
                print(
                    f"  quiet sites' change-to-row delay {phase:>6}: p50 {q[49]:.1f} s, "
                    f"p99 {q[98]:.1f} s over {len(values):,} rows (bound {bound:g} s)"
                )
            else:
                print(f"  quiet sites' change-to-row delay {phase:>6}: no rows")
        when = f"{converged_after:.1f} s" if converged_after is not None else "NOT converged"
        print(f"  storming sites converged after the storm began: {when}")
        print(f"  most changes taken by the top layer in one second: {most:,.0f}")
        print(
            "  oldest pending change during the storm, per site: "
            + ", ".join(f"{s} {age:.1f} s" for s, age in sorted(oldest.items()))
        )
        print(f"  sink equals every site's truth at the end: {equal}")


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sites, a shorter storm")
    parser.add_argument("--bootstrap", default=os.environ.get("CASCADE_KAFKA_BOOTSTRAP"))
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--storm-objects", type=int, default=24_000)
    parser.add_argument("--quiet-objects", type=int, default=3_000)
    parser.add_argument("--quiet-rate", type=float, default=20.0)
    parser.add_argument("--storm-flaps", type=int, default=3)
    parser.add_argument("--storm-seconds", type=float, default=10.0)
    parser.add_argument("--storm-changed", type=float, default=0.05)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--max-rate", type=float, default=1000.0)
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds before the storm")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--all-storm", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.storm_objects, args.quiet_objects = 6_000, 1_000
        args.quiet_rate, args.storm_seconds, args.baseline = 10.0, 5.0, 6.0
    # The broker named, else a local one on the default port: stopped by its pid at the end if
    # this bench started it (one already running is used and left running).
    with broker(args.bootstrap, KAFKA_PORT) as bootstrap:
        print(
            f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        with tempfile.TemporaryDirectory(prefix="cascade-fairness-") as tmp:
            scenario = Scenario(args, Path(tmp), bootstrap)
            try:
                scenario.start()
                scenario.run()
            finally:
                scenario.procs.stop_all()


if __name__ == "__main__":
    main()
