"""What the comparison and scale benches share: the machine line, the broker, and starting
simulated sites, pollers and consumers through the demo's process helpers.

Every process is a real `cascade-connector` command started by `connector.dev.demo.processes`, so
it is stopped by its pid in `Processes.stop_all` (the benches call it in a `finally`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import os
import platform
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import sqlalchemy as sa

from connector.dev import free_port
from connector.dev.demo.observe import SinkReader, StatusMap, compare, metric_total
from connector.dev.demo.processes import (
    DemoError,
    Processes,
    child_env,
    http_json,
    http_text,
    wait_until,
)
from connector.dev.demo.run import flags
from connector.dev.local_kafka import LocalKafka
from connector.dev.local_postgres import LocalPostgres
from connector.errors import KafkaError
from connector.kafka.admin import delete_topics
from connector.kafka.settings import KafkaSettings
from connector.kafka.topics import ensure_site_topics
from connector.sinks.sql import create_engine, resource_status

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
#: The local broker's port when a bench is given none (the one `make demo` and `make test` use).
KAFKA_PORT = 9092
#: The resource kinds the sites' pollers poll and the benches compare.
KINDS = ("server", "volume", "port")


def load() -> str:
    """The load average, printed beside every figure: the machine is shared."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f}"


def consumer_version() -> str:
    """Which top consumer measured: the coalescing window of issue 10, or per-batch only."""
    if importlib.util.find_spec("connector.top.window") is not None:
        return "top consumer with the coalescing window (issue 10)"
    return "top consumer with per-batch coalescing only (main before issue 10)"


def machine() -> str:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("confluent-kafka", "fastavro", "SQLAlchemy", "openstacksdk")
    )
    return (
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, {versions}; commit {commit or '?'}; "
        f"{consumer_version()}; {load()}"
    )


@contextmanager
def broker(bootstrap: str | None, port: int) -> Iterator[str]:
    """The Kafka to use: `bootstrap` when given, else a local broker on `port`, stopped on the
    way out if this bench started it."""
    if bootstrap:
        yield bootstrap
        return
    kafka = LocalKafka(port=port)
    started = not kafka.status().running
    address = kafka.start()
    try:
        yield address
    finally:
        if started:
            kafka.stop()


@dataclass(frozen=True)
class Run:
    """One bench run: its broker, its topics' prefix, where its logs go, and its processes
    (which publish under the prefix to that broker)."""

    kafka: str
    prefix: str
    workdir: Path
    procs: Processes


@contextmanager
def bench_run(
    name: str, settings: str, bootstrap: str | None, port: int, echo: Callable[[str], None]
) -> Iterator[Run]:
    """Print the machine and `settings` lines, then run with the broker (see `broker`), topics
    named `<name>.<time>.*` and logs in a new directory; on the way out every process is stopped
    by its pid and the run's topics are deleted."""
    echo(machine())
    echo(f"settings: {settings}")
    prefix = f"{name}.{time.strftime('%Y%m%d%H%M%S')}"
    workdir = Path(tempfile.mkdtemp(prefix=f"cascade-{name}-"))
    echo(f"logs in {workdir}")
    with broker(bootstrap, port) as kafka:
        env = {"CASCADE_KAFKA_BOOTSTRAP": kafka, "CASCADE_KAFKA_TOPIC_PREFIX": f"{prefix}.status"}
        procs = Processes(workdir, child_env(env))
        try:
            yield Run(kafka, prefix, workdir, procs)
        finally:
            procs.stop_all()
            drop_topics(kafka, f"{prefix}.", echo)


def start_sites(
    run: Run, names: list[str], counts: Mapping[str, int], timeout: float = 300
) -> tuple[dict[str, str], list[str]]:
    """A sim, its topic and a poller (defaults, KINDS) per site: the sims' URLs once each
    answers, and the pollers' metrics URLs (not waited on)."""
    sims = start_sims(run.procs, run.workdir, names, counts, timeout)
    ensure_topics(run.kafka, f"{run.prefix}.status", names)
    return sims, start_pollers(run.procs, run.workdir, names, kinds=",".join(KINDS))


def drop_topics(bootstrap: str, prefix: str, echo: Callable[[str], None]) -> None:
    try:
        delete_topics(bootstrap, prefix)
    except KafkaError as exc:
        echo(f"warning: could not delete this run's topics: {exc}")


def start_sims(
    procs: Processes,
    workdir: Path,
    names: list[str],
    counts: Mapping[str, int],
    timeout: float = 300,
) -> dict[str, str]:
    """One `cascade-connector sim` per site; returns site -> URL once each answers."""
    sims: dict[str, str] = {}
    for i, site in enumerate(names):
        port = quiet_port()
        sims[site] = f"http://127.0.0.1:{port}"
        procs.start(
            f"sim-{site}",
            "sim",
            *flags(
                site=site,
                listen=f"127.0.0.1:{port}",
                seed=i,
                write_clouds_yaml=workdir / f"clouds-{site}.yaml",
                **counts,
            ),
        )
    for site, url in sims.items():
        wait_until(
            f"simulated {site}", partial(http_json, f"{url}/_sim/info"), timeout, procs.check_alive
        )
        wait_until(
            f"clouds.yaml of {site}",
            (workdir / f"clouds-{site}.yaml").exists,
            30,
            procs.check_alive,
        )
    return sims


def ensure_topics(bootstrap: str, prefix: str, sites: list[str], timeout: float = 60) -> None:
    """Create the sites' topics in one request; it returns once every partition has a leader
    (a poller that reads a topic created a moment ago can otherwise get "unknown topic or
    partition")."""
    ensure_site_topics(
        KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix, admin_timeout=timeout), sites
    )


def quiet_port() -> int:
    """A free port below the ephemeral range: a port from `free_port` may be taken by some
    process's outgoing connection before the child binds it, which on a machine with dozens of
    clients happens."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def start_pollers(
    procs: Processes,
    workdir: Path,
    sites: list[str],
    clouds: Mapping[str, Path] | None = None,
    **options: object,
) -> list[str]:
    """A `cascade-connector produce` per site, reaching it through `clouds[site]` (default
    `<workdir>/clouds-<site>.yaml`); returns their metrics URLs."""
    urls = []
    for site in sites:
        port = quiet_port()
        urls.append(f"http://127.0.0.1:{port}/metrics")
        path = clouds[site] if clouds is not None else workdir / f"clouds-{site}.yaml"
        procs.env["OS_CLIENT_CONFIG_FILE"] = str(path)
        procs.start(f"poller-{site}", "produce", *flags(site=site, metrics_port=port, **options))
    return urls


def start_consumer(procs: Processes, name: str, **options: object) -> str:
    """A `cascade-connector consume`; returns its metrics URL."""
    port = quiet_port()
    procs.start(name, "consume", *flags(metrics_port=port, **options))
    return f"http://127.0.0.1:{port}/metrics"


def wait_answering(procs: Processes, urls: list[str], timeout: float = 120) -> None:
    for url in urls:
        wait_until(url, partial(http_text, url), timeout, procs.check_alive)


def storm_over(sims: Mapping[str, str]) -> bool:
    return all(http_json(f"{url}/_sim/stats")["background_jobs"] == 0 for url in sims.values())


def wait_storm_over(
    procs: Processes, sims: Mapping[str, str], progress: Callable[[], None], every: float = 5.0
) -> None:
    """Return once every sim's storm has ended, calling `progress()` at most every `every` s;
    raises as soon as one of `procs` dies."""
    due = Progress(every)
    while not storm_over(sims):
        procs.check_alive()
        if due.due():
            progress()
        time.sleep(0.5)


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Progress:
    """Says when a progress line is due: at most every `every` seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        return True


def stat_cpu_seconds(stat: Path) -> float:
    """User plus system CPU seconds in a /proc `stat` file (a process's, or a thread's under
    /proc/PID/task); OSError once it is gone."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of a process so far; None once it is gone."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))
    except OSError:
        return None


def rss_kib(pid: int) -> int:
    """The process's resident set now (VmRSS), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def with_children(pid: int) -> list[int]:
    """`pid` and its direct children (PostgreSQL's backends, a JVM's launcher's child)."""
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def disk_bytes(root: Path) -> int:
    """Bytes on disk under `root` (allocated blocks, as du counts them)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with suppress(OSError):  # a segment deleted while we walk
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


class Usage:
    """CPU seconds and resident memory per kind of process, sampled: `sample(pids)` with the
    pids of each kind now; a process that ended keeps the CPU it last showed, so a phase's CPU
    is a difference of `cpu()` taken at its start and end."""

    def __init__(self) -> None:
        self._cpu: dict[str, dict[int, float]] = {}
        self._peak: dict[str, tuple[int, int]] = {}  # kind -> (largest process, all together)

    def sample(self, pids: Mapping[str, list[int]]) -> None:
        for kind, chosen in pids.items():
            seen = self._cpu.setdefault(kind, {})
            for pid in chosen:
                used = cpu_seconds(pid)
                if used is not None:
                    seen[pid] = used
            sizes = [rss_kib(pid) for pid in chosen]
            largest, together = self._peak.get(kind, (0, 0))
            self._peak[kind] = (max(largest, *sizes, 0), max(together, sum(sizes)))

    def cpu(self) -> dict[str, float]:
        return {kind: sum(seen.values()) for kind, seen in self._cpu.items()}

    def take_peaks(self) -> dict[str, tuple[int, int]]:
        """Peak RSS (KiB) per kind since the last call: (largest process, all together)."""
        peaks, self._peak = self._peak, {}
        return peaks


def plot_timeline(
    path: Path,
    title: str,
    series: Mapping[str, list[tuple[float, float]]],
    marks: list[tuple[float, str]],
) -> None:
    """One panel per series over the same time axis (seconds), with a vertical line and a
    label at each of `marks` (the phases' starts)."""
    import matplotlib  # here, not at the top: the bench's children start faster without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(10, 2.4 * len(series)), sharex=True)
    for ax, (label, points) in zip(axes, series.items(), strict=True):
        ax.plot([t for t, _ in points], [v for _, v in points], linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for at, name in marks:
            ax.axvline(at, color="grey", linestyle=":", linewidth=0.8)
            if ax is axes[0]:
                ax.annotate(name, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7)
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xlabel("seconds since start")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (statistics.quantiles over 100 cuts, inclusive: the
    default extrapolates past the largest value of a small sample; one value: itself)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# -- what the scale benches (poc_scale.py, many_sites.py) share --------------------------------


def service_pids(broker: LocalKafka, pg: LocalPostgres) -> dict[str, list[int]]:
    """The pids of the private broker and of PostgreSQL (postmaster and backends), by kind;
    an empty list for one not running."""
    kafka = broker.pid()
    try:
        postmaster = int((Path(str(pg.root)) / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        postmaster = 0
    return {
        "broker": with_children(kafka) if kafka else [],
        "postgres": with_children(postmaster) if postmaster else [],
    }


@dataclass
class PhaseResult:
    """One phase: its figures, then CPU seconds and peak RSS (KiB: largest process, all
    together) per kind of process, then `extra` rows printed after those."""

    name: str
    seconds: float
    figures: list[tuple[str, str]]
    cpu: dict[str, float]
    peaks: dict[str, tuple[int, int]]
    extra: list[tuple[str, str]] = field(default_factory=list)


def run_phase(
    name: str,
    body: Callable[[], list[tuple[str, str]]],
    usage: Usage,
    lock: threading.Lock,
    pids: Callable[[], Mapping[str, list[int]]],
) -> PhaseResult:
    """Announce phase `name`, run `body` (its figures), and measure its CPU and peak RSS by
    sampling `usage` (shared with a sampler thread under `lock`) at its start and end."""
    print(f"[{name}] {load()}")
    with lock:
        usage.sample(pids())
        before = usage.cpu()
        usage.take_peaks()
    began = time.monotonic()
    figures = body()
    seconds = time.monotonic() - began
    with lock:
        usage.sample(pids())
        cpu = {k: v - before.get(k, 0.0) for k, v in usage.cpu().items()}
        peaks = usage.take_peaks()
    return PhaseResult(name, seconds, figures, cpu, peaks)


def print_phase(r: PhaseResult, kinds: Sequence[str]) -> None:
    print(f"\n  {r.name}: {r.seconds:.1f} s; {load()}")
    rows = [*r.figures]
    for kind in kinds:
        largest, together = r.peaks.get(kind, (0, 0))
        rows.append(
            (
                f"{kind}: CPU s / peak RSS largest, all",
                f"{r.cpu.get(kind, 0.0):,.1f} / {largest / 1024:,.0f} MB, "
                f"{together / 1024:,.0f} MB",
            )
        )
    rows += r.extra
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"    {k:<{width}}  {v}")
    print()


def fmt_delays(values: list[float], digits: int = 1) -> str:
    """p50 / p99 / max of `values` (seconds) and how many."""
    if not values:
        return "no rows"
    p50, p99, most = pct(values, 0.5), pct(values, 0.99), max(values)
    return f"{p50:.{digits}f} / {p99:.{digits}f} / {most:.{digits}f} s over {len(values):,} rows"


def sink_delays(sink_url: str, sites: Collection[str], since: datetime, column: str) -> list[float]:
    """Seconds from each row's `column` (a time: observed_at, source_updated_at) to its
    applied_at, for the live rows of `sites` whose `column` is `since` or later."""
    rs = resource_status
    changed = rs.c[column]
    query = sa.select(rs.c.site, changed, rs.c.applied_at).where(
        changed >= since, rs.c.kind != "site", sa.not_(rs.c.deleted)
    )
    chosen = set(sites)
    engine = create_engine(sink_url)
    try:
        with engine.connect() as conn:
            return [
                (r.applied_at - r[1]).total_seconds()
                for r in conn.execute(query)
                if r.site in chosen
            ]
    finally:
        engine.dispose()


def wait_converged(
    sink_url: str,
    expected: StatusMap,
    since: float,
    timeout: float,
    check_alive: Callable[[], None],
    every: float = 10.0,
) -> float:
    """Seconds from `since` (monotonic) until the sink holds exactly `expected` for the sites
    it names, printing how far behind it is at most every `every` s; DemoError after
    `timeout` s.

    The sink's rows are read in full only once it holds as many as expected, and then no more
    than half the time: at millions of rows a read costs seconds of CPU (PostgreSQL's and this
    process's) that the run measured would not otherwise spend."""
    chosen = sorted({site for site, _kind, _id in expected})
    sink = SinkReader(sink_url)
    progress = Progress(every)
    deadline = time.monotonic() + timeout
    try:
        while True:
            check_alive()
            began = time.monotonic()
            held = sink.count(chosen)
            if held == len(expected):
                result = compare(expected, sink.statuses(chosen))
                if result.equal:
                    return time.monotonic() - since
                behind = result.behind
            else:
                behind = f"{held:,} of {len(expected):,} objects at the top"
            if time.monotonic() > deadline:
                raise DemoError(f"the top layer did not converge within {timeout:.0f} s: {behind}")
            if progress.due():
                print(f"  {behind}; {load()}")
            time.sleep(max(1.0, time.monotonic() - began))
    finally:
        sink.close()


class Members:
    """The top consumer group's members a bench started (`cascade-connector consume` with
    `options`), and their counters summed over them; a member retired keeps what it last
    counted, so a total never goes back."""

    def __init__(self, procs: Processes, timeout: float, **options: object) -> None:
        self._procs = procs
        self._timeout = timeout
        self._options = options
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self.urls: dict[str, str] = {}  #: process name -> metrics URL
        self._gone: dict[str, float] = {}

    def add(self) -> str:
        """Start a member and wait until it answers; its process name."""
        name = f"consumer-{next(self._numbers)}"
        url = start_consumer(self._procs, name, **self._options)
        wait_answering(self._procs, [url], timeout=self._timeout)
        with self._lock:
            self.urls[name] = url
        return name

    def retire(self, name: str, metrics: Iterable[str]) -> None:
        """Keep what member `name` counted of `metrics` and stop reading it (before it is
        stopped or killed)."""
        with self._lock:
            counted = http_text(self.urls.pop(name))
            for metric in metrics:
                self._gone[metric] = self._gone.get(metric, 0.0) + metric_total(counted, metric)

    def totals(self, metrics: Iterable[str]) -> dict[str, float]:
        """Each of `metrics` summed over the members, retired ones included; OSError when a
        member does not answer."""
        with self._lock:
            urls = list(self.urls.values())
            out = {m: self._gone.get(m, 0.0) for m in metrics}
        for url in urls:
            text = http_text(url)
            for metric in out:
                out[metric] += metric_total(text, metric)
        return out
