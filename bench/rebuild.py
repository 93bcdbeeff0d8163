"""A rebuild of the top layer from the log: K keys in 20 site topics into an empty database.

The bench writes `--keys` server records over `--sites` site topics (a topic per site, as the
pollers would) in-process through the product's publisher, codec and producer, plus a heartbeat
per site. Then, for each database (a throwaway durable PostgreSQL, then a SQLite file) and each
group size of `--members`, it starts that many real `cascade-connector consume` processes in a
fresh consumer group on an empty database and measures, end to end (process start, group join,
read, decode, window, apply, commit), the time until the database holds a row for every key:
rows/s over that time, the time until the first row (the start-up part of it), each
member's peak RSS (VmHWM) and the CPU the members used per row (steadier than rows/s on a
shared machine).

The written topics are kept for the next run with `--keep-topics` (reused when every partition
holds what a complete write leaves, rewritten otherwise); without it they are deleted at the end,
as are the run's dead-letter topic and consumer groups. The last line:
`rebuild: K keys into postgresql at N rows/s with 1 member`.

    .venv/bin/python bench/rebuild.py [--quick] [--keys 1000000] [--members 1,2] [--python P]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka
import sqlalchemy as sa
from common import (
    IMG,
    broker,
    cpu_seconds,
    drop_topics,
    ensure_topics,
    load,
    machine,
    peak_rss_kib,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from publish_path import server_observation

from connector.dev.demo.processes import DemoError, Processes, child_env
from connector.dev.demo.run import flags
from connector.dev.local_postgres import LocalPostgres
from connector.kafka.producer import Producer
from connector.kafka.settings import KafkaSettings
from connector.kafka.topics import site_topic
from connector.ops.heap import collect_less
from connector.ops.signals import interrupt, stop_on_signals
from connector.records.codec import Codec
from connector.sinks.sql import SqlSink, sqlalchemy_url
from connector.site.heartbeat import Health
from connector.site.publisher import Publisher
from connector.site.site_metrics import SiteMetrics


@dataclass(frozen=True)
class Phase:
    """One rebuild: into which database, with how many members, and what it took."""

    database: str
    members: int
    keys: int
    seconds: float
    first_row: float
    peak_rss_kib: list[int]
    #: CPU seconds (user + system) each member used until then: under load the rate moves with
    #: the machine, this much less
    cpu: list[float]
    #: (seconds since the members started, rows in the database), sampled
    progress: list[tuple[float, int]]

    @property
    def rate(self) -> float:
        return self.keys / self.seconds

    @property
    def cpu_us_per_row(self) -> float:
        return sum(self.cpu) / self.keys * 1e6


# -- writing the topics ------------------------------------------------------------------------


def write_topics(kafka: KafkaSettings, sites: list[str], per_site: int) -> float:
    """`per_site` server records and a heartbeat per site, through the product's publisher;
    returns the seconds it took (flush included)."""
    producer = Producer(kafka)
    codec = Codec()
    started = time.perf_counter()
    try:
        with collect_less():  # as the poller runs
            for site in sites:
                metrics = SiteMetrics(CollectorRegistry(), site)
                publisher = Publisher(
                    site,
                    site_topic(kafka.topic_prefix, site),
                    producer,
                    codec,
                    metrics,
                    Health(["server"], metrics),
                    {},
                    0,
                )
                for i in range(per_site):
                    publisher.observe("server", server_observation(site, i))
                publisher.heartbeat("ok", {})
            producer.flush(300)
    finally:
        producer.close()
    return time.perf_counter() - started


def messages_in(kafka: KafkaSettings, sites: list[str]) -> int | None:
    """Messages the sites' topics hold (high minus low watermark, summed), None when one of
    them does not exist."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": "rebuild-bench-watermarks"}
    )
    try:
        topics = consumer.list_topics(timeout=30).topics
        total = 0
        for site in sites:
            topic = topics.get(site_topic(kafka.topic_prefix, site))
            if topic is None or topic.error is not None:
                return None
            for partition in topic.partitions:
                tp = confluent_kafka.TopicPartition(topic.topic, partition)
                low, high = consumer.get_watermark_offsets(tp, timeout=30)
                total += high - low
        return total
    finally:
        consumer.close()


# -- one rebuild -------------------------------------------------------------------------------


def rows_in(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM resource_status")).scalar_one())


def rebuild(
    procs: Processes,
    name: str,
    url: str,
    group: str,
    dead_letters: str,
    members: int,
    keys: int,
    timeout: float,
    python: str | None,
) -> Phase:
    """`members` consumers of a fresh group into the empty database at `url`, until it holds
    `keys` rows; they are stopped on the way out. `python`: the interpreter the members run
    (another checkout's venv, for a before-and-after), else this one."""
    print(f"[{name}, {members} member(s)] a fresh group into an empty database; {load()}")
    SqlSink(url).close()  # the tables exist before the members start: counting can begin at once
    engine = sa.create_engine(sqlalchemy_url(url))
    prefix = f"consumer-{name}-{members}-"
    try:
        started = time.monotonic()
        for i in range(members):
            options = flags(sink=url, group=group, dead_letter_topic=dead_letters)
            procs.start(f"{prefix}{i}", "consume", *options, python=python)
        progress: list[tuple[float, int]] = []
        first_row = None
        last_print = started
        while True:
            procs.check_alive()
            rows = rows_in(engine)
            now = time.monotonic()
            progress.append((now - started, rows))
            if rows and first_row is None:
                first_row = now - started
            if rows >= keys:
                break
            if now - started > timeout:
                raise DemoError(f"{rows:,} of {keys:,} rows after {timeout:.0f} s")
            if now - last_print >= 10:
                print(f"  {rows:,} rows after {now - started:.0f} s; {load()}")
                last_print = now
            time.sleep(0.5)
        seconds = now - started
        rss = [peak_rss_kib(p.pid) for p in procs.children(prefix)]
        cpu = [cpu_seconds(p.pid) or 0.0 for p in procs.children(prefix)]
    finally:
        engine.dispose()
        procs.stop(prefix)
    phase = Phase(name, members, keys, seconds, first_row or seconds, rss, cpu, progress)
    print(
        f"  {keys:,} rows in {seconds:.1f} s: {phase.rate:,.0f} rows/s end to end (first row "
        f"after {phase.first_row:.1f} s), peak RSS {', '.join(f'{k / 1024:.0f}' for k in rss)} "
        f"MiB, consumer CPU {'+'.join(f'{c:.1f}' for c in cpu)} s "
        f"({phase.cpu_us_per_row:.1f} us/row); {load()}"
    )
    return phase


@contextmanager
def databases(workdir: Path) -> Iterator[dict[str, Callable[[str], str]]]:
    """database -> a function making an empty database of that kind by name (its URL)."""
    with LocalPostgres(durable=True) as pg:

        def postgresql(name: str) -> str:
            admin = sa.create_engine(sqlalchemy_url(pg.url), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            return pg.url.rsplit("/", 1)[0] + f"/{name}"

        def sqlite(name: str) -> str:
            return f"sqlite:///{workdir / f'{name}.sqlite'}"

        yield {"postgresql": postgresql, "sqlite": sqlite}


def drop_groups(bootstrap: str, groups: list[str]) -> None:
    """Delete the run's consumer groups (their members are stopped)."""
    if not groups:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for group, future in admin.delete_consumer_groups(groups, request_timeout=30).items():
        try:
            future.result()
        except confluent_kafka.KafkaException as exc:
            print(f"warning: could not delete consumer group {group}: {exc}")


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 keys")
    parser.add_argument("--keys", type=int, help="keys in all (default 1,000,000)")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--members", default="1,2", help="group sizes to run, e.g. 1,2")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--keep-topics", action="store_true", help="keep them for the next run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per rebuild")
    parser.add_argument(
        "--python", help="the members' interpreter: another checkout's venv, for a before/after"
    )
    parser.add_argument("--plot", type=Path, default=IMG / "rebuild.png")
    parser.add_argument("--bootstrap", default=os.environ.get("CASCADE_KAFKA_BOOTSTRAP"))
    parser.add_argument("--kafka-port", type=int, default=9092)
    a = parser.parse_args()
    keys = a.keys or (100_000 if a.quick else 1_000_000)
    per_site = keys // a.sites
    keys = per_site * a.sites
    sites = [f"site-{i:02d}" for i in range(a.sites)]
    members = [int(m) for m in a.members.split(",")]
    print(machine())
    print(
        f"settings: {keys:,} keys in {a.sites} site topics, group sizes {members}, into "
        f"{a.databases} (PostgreSQL durable); consumers are `cascade-connector consume` processes "
        "with the default settings"
    )
    run_id = time.strftime("%Y%m%d%H%M%S")
    # Named by size, not by run: a kept write is found again by the next run of the same size.
    prefix = f"rebuild.cache{keys}"
    workdir = Path(tempfile.mkdtemp(prefix="cascade-rebuild-"))
    print(f"logs in {workdir}")
    phases: list[Phase] = []
    groups: list[str] = []
    with broker(a.bootstrap, a.kafka_port) as bootstrap:
        kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=f"{prefix}.status")
        env = {
            "CASCADE_KAFKA_BOOTSTRAP": bootstrap,
            "CASCADE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        }
        procs = Processes(workdir, child_env(env))
        dead_letters = f"rebuild.{run_id}.deadletter"
        try:
            held = messages_in(kafka, sites)
            if held == keys + a.sites:
                print(f"the topics of an earlier run hold {held:,} messages: reused")
            else:
                if held is not None:
                    print(f"the topics hold {held:,} messages, not {keys + a.sites:,}: rewritten")
                    drop_topics(bootstrap, f"{prefix}.", print)
                ensure_topics(bootstrap, kafka.topic_prefix, sites)
                took = write_topics(kafka, sites, per_site)
                print(
                    f"wrote {keys:,} records in {took:.1f} s ({keys / took:,.0f} records/s, "
                    f"through the publisher); {load()}"
                )
            with databases(workdir) as make:
                for database in a.databases.split(","):
                    for n in members:
                        group = f"rebuild.{run_id}.{database}.{n}"
                        groups.append(group)
                        url = make[database](f"rebuild_{n}")
                        phases.append(
                            rebuild(
                                procs,
                                database,
                                url,
                                group,
                                dead_letters,
                                n,
                                keys,
                                a.timeout,
                                a.python,
                            )
                        )
        finally:
            procs.stop_all()
            drop_groups(bootstrap, groups)
            drop_topics(bootstrap, dead_letters, print)
            if not a.keep_topics:
                drop_topics(bootstrap, f"{prefix}.", print)
    if a.plot and phases:
        plot(a.plot, keys, phases)
        print(f"plot: {a.plot}")
    report(keys, phases)


def plot(path: Path, keys: int, phases: list[Phase]) -> None:
    import matplotlib  # here, not at the top: only the end of a run needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for p in phases:
        ax.plot(
            [t for t, _ in p.progress],
            [rows for _, rows in p.progress],
            label=f"{p.database}, {p.members} member(s): {p.rate:,.0f} rows/s",
        )
    ax.set_xlabel("seconds since the members started")
    ax.set_ylabel("rows in the empty database")
    ax.set_title(f"rebuild of {keys:,} keys from 20 site topics (bench/rebuild.py)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(keys: int, phases: list[Phase]) -> None:
    print(f"\nRebuild of {keys:,} keys, end to end; {load()}")
    print(
        f"  {'database':<11} {'members':>7} {'seconds':>8} {'rows/s':>9} {'1st row s':>9} "
        f"{'CPU us/row':>10} RSS MiB"
    )
    for p in phases:
        rss = "/".join(f"{k / 1024:.0f}" for k in p.peak_rss_kib)
        print(
            f"  {p.database:<11} {p.members:>7} {p.seconds:>8.1f} {p.rate:>9,.0f} "
            f"{p.first_row:>9.1f} {p.cpu_us_per_row:>10.1f} {rss}"
        )
    headline = next((p for p in phases if p.database == "postgresql" and p.members == 1), None)
    if headline is not None:
        print(
            f"rebuild: {keys:,} keys into postgresql at {headline.rate:,.0f} rows/s with 1 member"
        )


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process this started.
    with stop_on_signals(interrupt):
        main()
