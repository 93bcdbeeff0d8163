"""The demo's script: start everything, sync, storm, converge, and print the accounting.

Phases: (1) a local broker, N simulated sites, a poller per site and one top consumer into a
SQLite file; wait until the sink equals every site's truth. (2) A restart storm in the first site
(every object flapping several times, a known fraction ending in another status); live progress;
wait until the sink equals the truth again.
(3) The table: what happened at the sites, what crossed Kafka, what reached the top layer, and
what a push-every-change and a proxy-polling design would have cost in the same run.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from connector.dev.demo.observe import (
    Comparison,
    SinkReader,
    SiteCounters,
    compare,
    full_listing_cost,
    scrape_total,
    truth,
)
from connector.dev.demo.processes import (
    DemoError,
    Processes,
    child_env,
    http_json,
    http_text,
    logged_port,
    sim_url,
    wait_until,
)
from connector.dev.local_kafka import LocalKafka
from connector.errors import KafkaError
from connector.kafka.admin import delete_topics
from connector.ops.signals import interrupt, stop_on_signals

KINDS = ("server", "volume", "port")


@dataclass(frozen=True)
class DemoOptions:
    sites: int = 2
    servers: int = 5000
    volumes: int = 5000
    ports: int = 10000
    storm_flaps: int = 3
    storm_seconds: float = 10.0
    storm_changed: float = 0.05  #: fraction of the storm's objects that end in another status
    max_rate: float = 10_000.0
    interval: float = 10.0
    converge_timeout: float = 300.0
    bootstrap: str | None = None  #: an existing Kafka; default: the local broker
    kafka_port: int = 9092
    workdir: Path | None = None


@dataclass
class Snapshot:
    """Every counter the report needs, at one moment."""

    at: float
    site: SiteCounters
    published: float
    consumed: float
    coalesced: float
    rows: float
    heartbeat_rows: float
    batches: float
    max_per_second: float


class Demo:
    def __init__(self, options: DemoOptions, echo: Callable[[str], None]) -> None:
        self.o = options
        self.echo = echo
        self.run_id = time.strftime("%Y%m%d%H%M%S")
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="cascade-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"demo.{self.run_id}.status"
        self.sink_url = f"sqlite:///{self.workdir / 'top-layer.sqlite'}"
        self.sims: dict[str, str] = {}
        self.poller_metrics: list[str] = []
        self.consumer_metrics = ""
        self.bootstrap = ""
        #: every snapshot taken while converging, for plots
        self.timeline: list[tuple[str, Snapshot]] = []

    def run(self) -> bool:
        self.bootstrap = self.o.bootstrap or LocalKafka(port=self.o.kafka_port).start()
        self.echo(f"Kafka at {self.bootstrap}; logs and the top-layer database in {self.workdir}")
        procs = Processes(
            self.workdir,
            child_env(
                {
                    "CASCADE_KAFKA_BOOTSTRAP": self.bootstrap,
                    "CASCADE_KAFKA_TOPIC_PREFIX": self.prefix,
                }
            ),
        )
        try:
            self._start(procs)
            return self._play(procs)
        finally:
            procs.stop_all()
            self._delete_topics()

    def _start(self, procs: Processes) -> None:
        o = self.o
        names = [f"site-{chr(ord('a') + i)}" for i in range(o.sites)]
        # Every listener takes a port of the kernel's choosing and says which (a sim in its
        # clouds.yaml, the others in their log): a port picked free here can be taken by
        # another program before a slow-starting child binds it.
        for i, site in enumerate(names):
            clouds = self.workdir / f"clouds-{site}.yaml"
            procs.start(
                f"sim-{site}",
                "sim",
                *flags(
                    site=site,
                    listen="127.0.0.1:0",
                    servers=o.servers,
                    volumes=o.volumes,
                    ports=o.ports,
                    seed=i,
                    write_clouds_yaml=clouds,
                ),
            )
        for site in names:
            clouds = self.workdir / f"clouds-{site}.yaml"
            wait_until(f"clouds.yaml of {site}", clouds.exists, 120, procs.check_alive)
            url = sim_url(clouds, site)
            self.sims[site] = url
            wait_until(
                f"simulated {site}", partial(http_json, f"{url}/_sim/info"), 120, procs.check_alive
            )
        for site in names:
            procs.env["OS_CLIENT_CONFIG_FILE"] = str(self.workdir / f"clouds-{site}.yaml")
            procs.start(
                f"poller-{site}",
                "produce",
                *flags(site=site, interval=o.interval, kinds=",".join(KINDS), metrics_port=0),
            )
        procs.start(
            "consumer",
            "consume",
            *flags(
                sink=self.sink_url,
                group=f"demo-{self.run_id}",
                dead_letter_topic=f"demo.{self.run_id}.deadletter",
                max_rate=o.max_rate,
                metrics_port=0,
            ),
        )
        # Every process imports openstacksdk and librdkafka at once, seconds of CPU each: on two
        # busy cores twenty pollers take minutes to all serve their metrics.
        ready = 60.0 + 10.0 * len(names)
        for name in [*(f"poller-{site}" for site in names), "consumer"]:
            log_file = self.workdir / f"{name}.log"
            wait_until(
                f"the metrics port of {name}",
                partial(logged_port, log_file),
                ready,
                procs.check_alive,
            )
            url = f"http://127.0.0.1:{logged_port(log_file)}/metrics"
            wait_until(url, partial(http_text, url), ready, procs.check_alive)
            if name == "consumer":
                self.consumer_metrics = url
            else:
                self.poller_metrics.append(url)
        self.echo("sites:     " + ", ".join(f"{s} {u}" for s, u in self.sims.items()))
        self.echo(
            "pollers:   "
            + ", ".join(
                u.removesuffix("/metrics") + "/{metrics,readyz,livez}" for u in self.poller_metrics
            )
        )
        self.echo(
            "consumer:  "
            + self.consumer_metrics.removesuffix("/metrics")
            + "/{metrics,readyz,livez}, sink "
            + self.sink_url
        )

    def _play(self, procs: Processes) -> bool:
        sink = SinkReader(self.sink_url)
        try:
            self.echo(f"\n[1/2] initial sync of {self._objects():,} objects")
            start = self._snapshot()
            synced = self._converge(procs, sink, start, "sync")
            if not synced.equal:
                self.echo(f"FAILED: the sink did not converge: {synced}")
                return False
            listing = full_listing_cost(
                self.sims["site-a"], self.workdir / "clouds-site-a.yaml", "site-a"
            )
            before = truth(self.sims, KINDS)
            after_sync = self._snapshot()
            self.timeline.append(("sync", after_sync))
            self.echo(
                f"\n[2/2] restart storm in site-a: every object flaps "
                f"{self.o.storm_flaps}x within {self.o.storm_seconds:.0f} s"
            )
            http_json(
                f"{self.sims['site-a']}/_sim/storm",
                {
                    "flaps": self.o.storm_flaps,
                    "seconds": self.o.storm_seconds,
                    "kinds": list(KINDS),
                    "changed": self.o.storm_changed,
                },
            )
            final = self._converge(procs, sink, after_sync, "storm", settle=self.o.storm_seconds)
            end = self._snapshot()
            after = truth(self.sims, KINDS)
            changed = sum(
                1
                for key in before.keys() | after.keys()
                if before.get(key, "") != after.get(key, "")
            )
            self._report(after_sync, end, listing, final, changed)
            return final.equal
        finally:
            sink.close()

    def _converge(
        self, procs: Processes, sink: SinkReader, since: Snapshot, phase: str, settle: float = 0.0
    ) -> Comparison:
        """Show progress until the sink equals the truth (after `settle` s), or time runs out."""
        started = time.monotonic()
        last_print = 0.0
        result = Comparison(0, missing=1)
        while time.monotonic() - started < self.o.converge_timeout + settle:
            procs.check_alive()
            now = self._snapshot()
            self.timeline.append((phase, now))
            elapsed = now.at - started
            if elapsed >= settle:
                result = compare(truth(self.sims, KINDS), sink.statuses())
                if result.equal:
                    self._progress(phase, elapsed, since, now, result, final=True)
                    self.converge_seconds = elapsed
                    return result
            if now.at - last_print >= (0.5 if sys.stdout.isatty() else 3.0):
                self._progress(
                    phase, elapsed, since, now, result, final=False, storming=elapsed < settle
                )
                last_print = now.at
            time.sleep(0.25)
        self.converge_seconds = math.inf
        return result

    def _progress(
        self,
        phase: str,
        elapsed: float,
        since: Snapshot,
        now: Snapshot,
        result: Comparison,
        final: bool,
        storming: bool = False,
    ) -> None:
        d = now.site - since.site
        line = (
            f"  {phase} {elapsed:5.1f}s | site changes {d.status_changes:>9,} | "
            f"published {now.published - since.published:>9,.0f} | "
            f"applied {now.rows - since.rows:>8,.0f} rows in "
            f"{now.batches - since.batches:>5,.0f} calls | "
            f"top max {now.max_per_second:>6,.0f}/s | " + _state(result, storming)
        )
        if sys.stdout.isatty() and not final:
            sys.stdout.write("\r" + line)
            sys.stdout.flush()
        else:
            self.echo(("\r" if sys.stdout.isatty() else "") + line)

    def _snapshot(self) -> Snapshot:
        consumer = [self.consumer_metrics]
        return Snapshot(
            at=time.monotonic(),
            site=SiteCounters.read(self.sims.values()),
            published=scrape_total(self.poller_metrics, "cascade_site_changes_published_total")
            + scrape_total(self.poller_metrics, "cascade_site_tombstones_total")
            + scrape_total(self.poller_metrics, "cascade_site_heartbeats_total"),
            consumed=scrape_total(consumer, "cascade_consumer_records_total"),
            coalesced=scrape_total(consumer, "cascade_consumer_coalesced_records_total"),
            rows=scrape_total(consumer, "cascade_consumer_rows_applied_total"),
            heartbeat_rows=scrape_total(consumer, "cascade_consumer_heartbeats_applied_total"),
            batches=scrape_total(consumer, "cascade_consumer_batches_total", outcome="applied"),
            max_per_second=scrape_total(consumer, "cascade_consumer_records_max_per_second"),
        )

    def _objects(self) -> int:
        return self.o.sites * (self.o.servers + self.o.volumes + self.o.ports)

    def _report(
        self,
        before: Snapshot,
        after: Snapshot,
        listing: SiteCounters,
        final: Comparison,
        changed: int,
    ) -> None:
        o = self.o
        d = after.site - before.site
        seconds = after.at - before.at
        listings = o.sites * max(1, math.ceil(seconds / o.interval))
        rows = after.rows - before.rows
        beats = after.heartbeat_rows - before.heartbeat_rows
        per_object = f"{(rows - beats) / changed:.2f}" if changed else "-"
        ratio = f"1 : {d.status_changes / rows:,.0f}" if rows else "-"
        lines = [
            ("status changes at the sites", f"{d.status_changes:,}"),
            ("objects whose status changed", f"{changed:,}"),
            ("records published (incl. heartbeats)", f"{after.published - before.published:,.0f}"),
            ("records committed at the top", f"{after.consumed - before.consumed:,.0f}"),
            (
                "records left after coalescing in windows",
                f"{(after.consumed - before.consumed) - (after.coalesced - before.coalesced):,.0f}",
            ),
            ("rows written to the top layer", f"{rows:,.0f} ({beats:,.0f} of them heartbeats)"),
            ("rows per changed object (heartbeats aside)", per_object),
            ("top-layer calls (batches)", f"{after.batches - before.batches:,.0f}"),
            (
                "rate limit / most records applied in 1 s",
                f"{o.max_rate:,.0f}/s / {after.max_per_second:,.0f}",
            ),
            ("time to converge after the storm began", f"{self.converge_seconds:.1f} s"),
            ("site API load (requests, bytes)", f"{d.requests:,} req, {_mb(d.bytes_sent)}"),
            ("sink vs the sites' truth", str(final)),
            ("", ""),
            ("push every change: top-layer calls", f"{d.status_changes:,}"),
            ("rows written : push every change", ratio),
            (
                f"proxy polling every {o.interval:g} s: site API load",
                f"{listing.requests * listings:,} req, {_mb(listing.bytes_sent * listings)}",
            ),
        ]
        width = max(len(k) for k, _ in lines)
        self.echo(
            f"\nThe storm, accounted ({seconds:.1f} s from storm to convergence; "
            f"{o.sites} sites of {self._objects() // o.sites:,} objects):"
        )
        for key, value in lines:
            self.echo(f"  {key:<{width}}  {value}" if key else "")

    def _delete_topics(self) -> None:
        """Remove this run's topics; a failure here must not hide the run's own outcome."""
        if not self.bootstrap:
            return
        try:
            delete_topics(self.bootstrap, f"demo.{self.run_id}.")
        except KafkaError as exc:
            self.echo(f"warning: could not delete this run's topics: {exc}")


def _state(result: Comparison, storming: bool) -> str:
    if storming:
        return "storm under way"
    if result.equal:
        return "converged"
    return result.behind


def flags(**options: object) -> list[str]:
    """`--name value` pairs for a child's command line."""
    return [
        arg
        for name, value in options.items()
        for arg in (f"--{name.replace('_', '-')}", str(value))
    ]


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def run_demo(options: DemoOptions, echo: Callable[[str], None] = print) -> bool:
    """Run the demo; True when the sink converged to the truth after the storm."""
    try:
        # SIGTERM unwinds like Ctrl-C: every process the demo started is stopped on the way out.
        with stop_on_signals(interrupt):
            return Demo(options, echo).run()
    except DemoError:
        raise
    except KeyboardInterrupt:
        echo("\ninterrupted; everything the demo started is stopped")
        raise
