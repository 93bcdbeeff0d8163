"""1,000 sites at one top (issue 24): one bench process publishes through the product's own
publisher and codec into `--sites` site topics; the real consumer group reads them into
PostgreSQL.

A private Kafka on a free port (never the shared broker) and a PostgreSQL with durable defaults.
Each site is a `Publisher` (connector/site/publisher.py) of its own; `--sites-per-producer`
sites share a producer (in order, so the storming sites, the first ones, share none with a quiet
site when `--storm-sites` is a multiple of it, as pollers of their own would not). librdkafka
sends one partition per produce request: one producer for all 1,000 sites' 3,000 partitions held
a quiet site's record behind the others' for tens of seconds before it was readable
(docs/performance.md), a delay no deployment has; a producer per site (1,000 in one process,
3,000 threads) took more CPU than the run had. Sites have `--objects` objects (servers, volumes
and ports in turn) and a heartbeat every `--heartbeat-interval` s, as pollers send them (the
sites' heartbeats spread over the interval).
Top consumers are real `cascade-connector consume` processes. Phases, each printed as a table:

1. one member; every site publishes its objects: time until the top equals every site's truth;
2. steady churn of `--churn-rate` changes/s spread over the sites for `--churn-seconds`: p50 /
   p99 delay from publishing a change to its row (observed_at to applied_at), rows and heartbeat
   writes per second at the sink, sink calls per second;
3. a storm in `--storm-sites` sites (each restarts with `--storm-objects` objects, every one
   flapping `--flaps` times within `--storm-seconds`) while the others keep churning: the quiet
   sites' p99 (bound 5 s), time until the storming sites converge after the storm ended;
4. a second member joins, then one leaves (SIGTERM), churn going on: seconds until the group is
   stable with every partition assigned and the lag back to the steady churn's (at most twice
   phase 2's median, at least a second of what is published; bound 30 s);
   then the churn stops and the top must equal every site's truth (nothing lost).

For every phase: consumer CPU seconds and peak RSS (sampled VmRSS), broker CPU and RSS.

    .venv/bin/python bench/many_sites.py [--sites 1000] [--objects 100] [--churn-rate 500]

The last line: `many-sites: N sites: converged, quiet p99 P s during storms, rebalance settled
in S s`.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import confluent_kafka
import sqlalchemy as sa
from common import (
    KINDS,
    Members,
    PhaseResult,
    Progress,
    Usage,
    bench_run,
    ensure_topics,
    fmt_delays,
    load,
    pct,
    print_phase,
    quiet_port,
    run_phase,
    service_pids,
    sink_delays,
    wait_converged,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from connector.dev.demo.observe import StatusMap
from connector.dev.demo.processes import DemoError, Processes
from connector.dev.local_kafka import LocalKafka
from connector.dev.local_postgres import LocalPostgres
from connector.kafka.producer import Producer
from connector.kafka.settings import KafkaSettings
from connector.kafka.topics import site_topic
from connector.ops.signals import interrupt, stop_on_signals
from connector.records.codec import Codec
from connector.sinks.sql import create_engine, resource_status
from connector.site.heartbeat import Health
from connector.site.kinds import Observation
from connector.site.publisher import Publisher
from connector.site.site_metrics import SiteMetrics

STATUSES = {
    "server": ("ACTIVE", "SHUTOFF"),
    "volume": ("available", "in-use"),
    "port": ("ACTIVE", "DOWN"),
}
SAMPLE_SECONDS = 2.0
TICK = 0.05
ROWS = "cascade_consumer_rows_applied_total"
BEATS = "cascade_consumer_heartbeats_applied_total"
CALLS = "cascade_consumer_batches_total"
LAG = "cascade_consumer_lag_records"


@dataclass
class Site:
    """One simulated site: its publisher, and what it holds (the truth the top must equal)."""

    name: str
    publisher: Publisher
    health: Health
    producer: Producer
    objects: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, id) -> status

    def set(self, kind: str, object_id: str, status: str) -> None:
        self.objects[(kind, object_id)] = status
        self.publisher.observe(
            kind,
            Observation(
                id=object_id,
                status=status,
                name=f"{kind}-{object_id[:8]}",
                project_id="4f1c2b7e9d8a4c6b8e2f1a0d3c5b7e9f",
                details={"host": f"compute-{len(self.objects) % 50:02d}"},
                source_updated_at=datetime.now(UTC),
            ),
        )

    def flip(self, rng: random.Random) -> None:
        kind, object_id = rng.choice(list(self.objects))
        first, second = STATUSES[kind]
        self.set(kind, object_id, second if self.objects[(kind, object_id)] == first else first)


class Sites:
    """Every site's publisher (a producer per `--sites-per-producer` sites), and the thread
    that publishes their churn, storms and heartbeats at the rates asked."""

    def __init__(self, a: argparse.Namespace, kafka: KafkaSettings) -> None:
        self.a = a
        self.producers = [Producer(kafka) for _ in range(0, a.sites, max(1, a.sites_per_producer))]
        codec = Codec()
        self.sites: dict[str, Site] = {}
        for i in range(a.sites):
            name = f"site-{i:04d}"
            producer = self.producers[i // max(1, a.sites_per_producer)]
            metrics = SiteMetrics(CollectorRegistry(), name)
            health = Health(KINDS, metrics, a.interval, a.heartbeat_interval)
            publisher = Publisher(
                name,
                site_topic(kafka.topic_prefix, name),
                producer,
                codec,
                metrics,
                health,
                {},
                0,
            )
            self.sites[name] = Site(name, publisher, health, producer)
        self.churning: list[str] = []
        self.storm: list[tuple[float, Site, str, str, str]] = []  # (due, site, kind, id, status)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.published = 0
        self.heartbeats = 0

    def populate(self, site: Site, count: int, prefix: str = "") -> None:
        for n in range(count):
            kind = KINDS[n % len(KINDS)]
            site.set(
                kind, f"{prefix}{n:08d}-0000-4000-8000-{int(site.name[5:]):012x}", STATUSES[kind][0]
            )
        site.producer.poll(0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        deadline = time.monotonic() + 60  # for them all: a broker gone must not hold each 60 s
        for producer in self.producers:
            producer.flush(max(0.0, deadline - time.monotonic()))

    def churn(self, names: list[str]) -> None:
        with self._lock:
            self.churning = list(names)

    def start_storm(self, names: list[str]) -> None:
        """Every storming site restarts: `--storm-objects` objects each (new ones), every one
        flapping `--flaps` times at random moments within `--storm-seconds`."""
        a, rng, now = self.a, random.Random(7), time.monotonic()
        events = []
        for name in names:
            site = self.sites[name]
            for n in range(a.storm_objects):
                kind = KINDS[n % len(KINDS)]
                object_id = f"storm{n:07d}-0000-4000-8000-{int(name[5:]):012x}"
                first, second = STATUSES[kind]
                for flap in range(a.flaps * 2):
                    status = second if flap % 2 == 0 else first
                    events.append(
                        (now + rng.uniform(0, a.storm_seconds), site, kind, object_id, status)
                    )
                if rng.random() < a.changed:  # this one ends changed
                    events.append((now + a.storm_seconds, site, kind, object_id, second))
        events.sort(key=lambda e: e[0])
        with self._lock:
            self.storm = events

    def storm_over(self) -> bool:
        with self._lock:
            return not self.storm

    def truth(self, names: list[str] | None = None) -> StatusMap:
        with self._lock:
            chosen = [self.sites[n] for n in names] if names else self.sites.values()
            return {(s.name, k, i): status for s in chosen for (k, i), status in s.objects.items()}

    def _run(self) -> None:
        rng = random.Random(1)
        names = list(self.sites)
        period = self.a.heartbeat_interval
        # Heartbeats spread over the interval, as independent pollers' are.
        beat_due = {n: time.monotonic() + period * i / len(names) for i, n in enumerate(names)}
        owed = 0.0
        last = time.monotonic()
        while not self._stop.wait(TICK):
            now = time.monotonic()
            with self._lock:
                owed += self.a.churn_rate * (now - last) if self.churning else 0.0
                last = now
                for _ in range(int(owed)):
                    self.sites[rng.choice(self.churning)].flip(rng)
                    self.published += 1
                owed -= int(owed)
                while self.storm and self.storm[0][0] <= now:
                    _due, site, kind, object_id, status = self.storm.pop(0)
                    site.set(kind, object_id, status)
                    self.published += 1
                for name in names:
                    if beat_due[name] <= now:
                        site = self.sites[name]
                        for kind in KINDS:
                            site.health.poll_ok(kind, datetime.now(UTC), len(site.objects))
                        site.publisher.heartbeat(*site.health.heartbeat())
                        self.heartbeats += 1
                        beat_due[name] += period
            for producer in self.producers:
                producer.poll(0)


class Probe:
    """Where a quiet site's delay goes: a consumer of its own (no group, assigned) reads the
    partitions of a sample of sites from their ends and notes when each record became
    readable; a row's delay then splits into publishing to readable (the bench's producer, the
    broker) and readable to row (the top consumer's fetch queue, window and sink)."""

    def __init__(self, kafka: KafkaSettings, names: list[str]) -> None:
        self._consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": kafka.bootstrap,
                "group.id": f"{kafka.topic_prefix}.probe",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign(
            [
                confluent_kafka.TopicPartition(
                    site_topic(kafka.topic_prefix, n), p, confluent_kafka.OFFSET_END
                )
                for n in names
                for p in range(kafka.partitions)
            ]
        )
        self._codec = Codec()
        #: (site, kind, id, sequence) -> (record's create time, readable at), POSIX seconds
        self.seen: dict[tuple[str, str, str, int], tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.1):
                value = msg.value()
                if msg.error() is not None or not value:
                    continue
                now = time.time()
                r = self._codec.decode(value)
                self.seen[(r.site, r.kind, r.id, r.sequence)] = (msg.timestamp()[1] / 1000, now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


class Bench:
    def __init__(
        self, a: argparse.Namespace, procs: Processes, kafka: KafkaSettings, pg: LocalPostgres
    ) -> None:
        self.a = a
        self.procs = procs
        self.kafka = kafka
        self.sink_url = pg.url
        self.pg = pg
        self.group = f"{kafka.topic_prefix}.group"
        self.sites = Sites(a, kafka)
        self.names = list(self.sites.sites)
        self.members = Members(
            procs,
            a.timeout,
            sink=self.sink_url,
            group=self.group,
            dead_letter_topic=kafka.topic_prefix.removesuffix(".status") + ".deadletter",
        )
        self.usage = Usage()
        self.results: list[PhaseResult] = []
        self.storm_p99 = self.settled = self.steady_lag = float("nan")
        self.broker = LocalKafka(port=int(kafka.bootstrap.rsplit(":", 1)[1]))
        self.admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

    def pids(self) -> dict[str, list[int]]:
        consumers = [p.pid for p in self.procs.children("consumer-")]
        return {"consumer": consumers, **service_pids(self.broker, self.pg)}

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            with self._lock:
                self.usage.sample(self.pids())

    def phase(self, name: str, body: Callable[[], list[tuple[str, str]]]) -> None:
        result = run_phase(name, body, self.usage, self._lock, self.pids)
        self.results.append(result)
        print_phase(result, ("consumer", "broker", "postgres"))

    # -- phases ----------------------------------------------------------------------------

    def start_everything(self) -> list[tuple[str, str]]:
        a = self.a
        began = time.monotonic()
        ensure_topics(self.kafka.bootstrap, self.kafka.topic_prefix, self.names, timeout=600)
        topics_at = time.monotonic() - began
        print(f"  {len(self.names)} topics in {topics_at:.1f} s; {load()}")
        self._sampler.start()
        self.add_consumer()
        member_at = time.monotonic() - began
        for site in self.sites.sites.values():
            self.sites.populate(site, a.objects)
        self.sites.start()
        synced = self.converge(None, began)
        return [
            ("topics created (s)", f"{topics_at:.1f}"),
            ("member answering (s after start)", f"{member_at:.1f}"),
            ("top equals every site's truth (s after start)", f"{synced:.1f}"),
            ("objects", f"{len(self.names) * a.objects:,}"),
        ]

    def steady(self) -> list[tuple[str, str]]:
        a = self.a
        since = datetime.now(UTC)
        totals = self.totals()
        began = time.monotonic()
        probe = Probe(self.kafka, self.names[-a.probe_sites :])
        self.sites.churn(self.names)
        lags = []
        while time.monotonic() - began < a.churn_seconds:
            # The phase is a length of time under churn, by design; its lag is sampled as it goes.
            time.sleep(SAMPLE_SECONDS)
            lags.append(self.totals()[LAG])
        seconds = time.monotonic() - began
        self.steady_lag = pct(lags, 0.5)
        rates = {k: (v - totals[k]) / seconds for k, v in self.totals().items()}
        probe.stop()
        delays = self.delays(self.names, since)
        split = self.split(probe, since)
        return [
            ("changes/s published", f"{a.churn_rate:g} for {a.churn_seconds:g} s"),
            ("publish-to-row delay p50 / p99 / max", fmt_delays(delays, 2)),
            (f"of {a.probe_sites} sites: publish to produce call", fmt_delays(split[0], 2)),
            ("  produce call to readable in Kafka", fmt_delays(split[1], 2)),
            ("  readable to row", fmt_delays(split[2], 2)),
            ("rows/s at the sink", f"{rates[ROWS]:,.0f}"),
            ("heartbeat writes/s at the sink", f"{rates[BEATS]:,.0f}"),
            ("sink calls/s", f"{rates[CALLS]:,.1f}"),
            ("heartbeats published/s", f"{len(self.names) / a.heartbeat_interval:,.0f}"),
            ("consumer lag, median of samples (records)", f"{self.steady_lag:,.0f}"),
        ]

    def storm(self) -> list[tuple[str, str]]:
        a = self.a
        storming = self.names[: a.storm_sites]
        quiet = self.names[a.storm_sites :]
        self.sites.churn(quiet)
        since = datetime.now(UTC)
        totals = self.totals()
        began = time.monotonic()
        probe = Probe(self.kafka, quiet[: a.probe_sites])
        self.sites.start_storm(storming)
        while not self.sites.storm_over():
            self.procs.check_alive()
            time.sleep(0.2)
        ended = time.monotonic()
        after = self.converge(storming, ended)
        probe.stop()
        delays = self.delays(quiet, since)
        self.storm_p99 = pct(delays, 0.99)
        split = self.split(probe, since)
        done = self.totals()
        return [
            ("storming sites", f"{len(storming)} x {a.storm_objects:,} objects, {a.flaps} flaps"),
            ("storm took (s)", f"{ended - began:.1f}"),
            ("storming sites converged after the storm ended (s)", f"{after:.1f}"),
            (
                "rows / calls at the top",
                f"{done[ROWS] - totals[ROWS]:,.0f} / {done[CALLS] - totals[CALLS]:,.0f}",
            ),
            ("quiet sites' delay p50 / p99 / max", fmt_delays(delays, 2)),
            (f"of {a.probe_sites} of them: publish to produce call", fmt_delays(split[0], 2)),
            ("  produce call to readable in Kafka", fmt_delays(split[1], 2)),
            ("  readable to row", fmt_delays(split[2], 2)),
            ("bound", "p99 <= 5 s"),
        ]

    def rebalance(self) -> list[tuple[str, str]]:
        self.sites.churn(self.names)
        began = time.monotonic()
        self.add_consumer()
        joined = self.settle(2, began)
        name = sorted(self.members.urls)[0]
        self.members.retire(name, (ROWS, BEATS, CALLS))
        began = time.monotonic()
        self.procs.stop(name)  # SIGTERM: it leaves the group
        left = self.settle(1, began)
        self.settled = max(joined, left)
        self.sites.churn([])
        converged = self.converge(None, time.monotonic())
        return [
            ("a member joins: settled (s)", f"{joined:.1f}"),
            (f"{name} leaves (SIGTERM): settled (s)", f"{left:.1f}"),
            ("churn stopped: top equals every site's truth (s)", f"{converged:.1f}"),
            ("settled: stable, every partition assigned, lag <=", f"{self.settled_lag():,.0f}"),
            ("bound", "settled <= 30 s, nothing lost"),
        ]

    # -- observation -----------------------------------------------------------------------

    def add_consumer(self) -> None:
        self.members.add()

    def totals(self) -> dict[str, float]:
        return self.members.totals((ROWS, BEATS, CALLS, LAG))

    def settled_lag(self) -> float:
        """The lag of a settled group: twice the steady churn's median (records published but
        not committed yet: the windows' wait, a sink call, the commit, and heartbeats are
        records too), at least one second of everything published."""
        published = float(self.a.churn_rate + len(self.names) / self.a.heartbeat_interval)
        return max(2 * self.steady_lag, published)

    def settle(self, members: int, since: float) -> float:
        """Seconds from `since` until the group is stable with `members` members holding every
        partition and the lag is back to the steady churn's (`settled_lag`)."""
        partitions = len(self.names) * self.kafka.partitions
        deadline = time.monotonic() + self.a.timeout
        progress = Progress(5)
        while True:
            self.procs.check_alive()
            state, assigned = self.group_state()
            lag = self.totals()[LAG]
            settled = state == "STABLE" and len(assigned) == members and min(assigned) > 0
            if settled and sum(assigned) == partitions and lag <= self.settled_lag():
                return time.monotonic() - since
            if time.monotonic() > deadline:
                raise DemoError(f"the group did not settle: {state}, {assigned}, lag {lag:,.0f}")
            if progress.due():
                print(f"  group {state}, partitions per member {assigned}, lag {lag:,.0f}")
            time.sleep(0.5)

    def group_state(self) -> tuple[str, list[int]]:
        future = self.admin.describe_consumer_groups([self.group], request_timeout=10)[self.group]
        try:
            group = future.result(timeout=15)
        except confluent_kafka.KafkaException:
            return "UNKNOWN", []
        state = group.state.name
        return state, [len(m.assignment.topic_partitions) for m in group.members]

    def converge(self, names: list[str] | None, since: float) -> float:
        """Seconds from `since` until the sink equals the truth of `names` (every site: None)."""
        return wait_converged(
            self.sink_url, self.sites.truth(names), since, self.a.timeout, self.procs.check_alive
        )

    def delays(self, names: list[str], since: datetime) -> list[float]:
        """Publish-to-row delays of the rows of `names` holding a change published since
        `since` (a key changed twice counts its last change)."""
        return sink_delays(self.sink_url, names, since, "observed_at")

    def split(self, probe: Probe, since: datetime) -> tuple[list[float], list[float], list[float]]:
        """The delays of the rows the probe saw, split in three: publishing (observed_at) to
        the produce call (the record's timestamp), to readable, to the row (applied_at)."""
        rs = resource_status
        query = sa.select(
            rs.c.site, rs.c.kind, rs.c.id, rs.c.sequence, rs.c.observed_at, rs.c.applied_at
        ).where(rs.c.observed_at >= since, rs.c.kind != "site")
        engine = create_engine(self.sink_url)
        parts: tuple[list[float], list[float], list[float]] = ([], [], [])
        try:
            with engine.connect() as conn:
                for r in conn.execute(query):
                    seen = probe.seen.get((r.site, r.kind, r.id, r.sequence))
                    if seen is None:
                        continue
                    created, readable = seen
                    parts[0].append(created - r.observed_at.timestamp())
                    parts[1].append(readable - created)
                    parts[2].append(r.applied_at.timestamp() - readable)
        finally:
            engine.dispose()
        return parts

    def finish(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(10)
        self.sites.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--objects", type=int, default=100, help="per site")
    parser.add_argument("--churn-rate", type=float, default=500.0, help="changes/s, all sites")
    parser.add_argument("--churn-seconds", type=float, default=60.0)
    parser.add_argument("--heartbeat-interval", type=float, default=5.0, help="pollers' default")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval in beats")
    parser.add_argument("--storm-sites", type=int, default=10)
    parser.add_argument("--storm-objects", type=int, default=2000, help="per storming site")
    parser.add_argument("--flaps", type=int, default=3)
    parser.add_argument("--storm-seconds", type=float, default=10.0)
    parser.add_argument("--changed", type=float, default=0.05)
    parser.add_argument("--sites-per-producer", type=int, default=10)
    parser.add_argument("--probe-sites", type=int, default=20, help="quiet sites probed")
    parser.add_argument("--timeout", type=float, default=600.0, help="per wait")
    a = parser.parse_args()
    settings = (
        f"{a.sites} sites x {a.objects} objects, heartbeats every {a.heartbeat_interval:g} s, "
        f"churn {a.churn_rate:g}/s for {a.churn_seconds:g} s, storms in {a.storm_sites} sites "
        f"({a.storm_objects:,} objects each, {a.flaps} flaps in {a.storm_seconds:g} s), one "
        f"bench process publishing ({a.sites_per_producer} sites per producer), a private "
        f"broker, PostgreSQL durable"
    )
    with (
        LocalPostgres(durable=True) as pg,
        bench_run("many", settings, None, quiet_port(), print) as run,
    ):
        kafka = KafkaSettings(bootstrap=run.kafka, topic_prefix=f"{run.prefix}.status")
        bench = Bench(a, run.procs, kafka, pg)
        try:
            bench.phase("1 start and initial sync", bench.start_everything)
            bench.phase("2 steady churn", bench.steady)
            bench.phase("3 storm", bench.storm)
            bench.phase("4 a member joins, one leaves", bench.rebalance)
        finally:
            bench.finish()
    print(
        f"many-sites: {a.sites} sites: converged, quiet p99 {bench.storm_p99:.1f} s during "
        f"storms, rebalance settled in {bench.settled:.1f} s"
    )


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process this started.
    with stop_on_signals(interrupt):
        main()
