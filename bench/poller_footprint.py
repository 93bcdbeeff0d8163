"""What one real poller costs at poc_scale's full site size (issue 24): CPU and memory of a
`cascade-connector produce` process over its initial sync and at rest.

One simulated site (`cascade-connector sim`, its own process) of `--servers` / `--ports` /
`--volumes` objects (poc_scale's full size by default: 10,000 / 10,000 / 3,000), its topic on
the given broker under a prefix of its own (dropped at the end), and one real poller with
defaults. Sampled every `SAMPLE_SECONDS` from /proc: the poller's CPU seconds (all threads) and
resident set, from its start until it has published every object (its
`cascade_site_changes_published_total`), then over `--rest` seconds at rest. `--profile` runs
py-spy on the poller over the sync and prints where its CPU went (functions by own and by
inclusive samples). `-e KEY=VALUE` adds to the poller's environment (MALLOC_ARENA_MAX=2, ...)
and `-X KEY=VALUE` to its librdkafka settings, for before-and-after runs of a setting.

`--heap` answers where the memory goes instead: the poller runs in this process (the code
behind `produce`, `open_site_poller`), one resync of every kind and a flush under tracemalloc,
then the allocation sites of what is still held, and the most numerous objects by type.

    .venv/bin/python bench/poller_footprint.py [--profile] [--rest 60] [-e KEY=VALUE]
    .venv/bin/python bench/poller_footprint.py --heap

The last line: `poller-footprint: N objects: synced in S s, C CPU s (U us an object), peak R MB
(B bytes an object over the idle poller); at rest C CPU s in T s`.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from common import (
    Run,
    bench_run,
    cpu_seconds,
    ensure_topics,
    load,
    peak_rss_kib,
    quiet_port,
    rss_kib,
    stat_cpu_seconds,
)
from prometheus_client import CollectorRegistry

from connector.config import load_settings
from connector.dev.demo.observe import metric_total
from connector.dev.demo.processes import http_text, wait_until
from connector.dev.demo.run import flags
from connector.dev.local_kafka import LocalKafka
from connector.ops.heap import collect_less
from connector.ops.signals import interrupt, stop_on_signals
from connector.site.runner import open_site_poller

SAMPLE_SECONDS = 0.5
KINDS = "server,volume,port"
PUBLISHED = "cascade_site_changes_published_total"
SITE = "site-000"


def published(url: str) -> float:
    try:
        return metric_total(http_text(url), PUBLISHED)
    except OSError:
        return 0.0


def spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` into collapsed stacks: the thread holding the GIL only, so the
    samples are Python's CPU (librdkafka's own threads are in `threads_cpu`)."""
    py_spy = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "py-spy"
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--gil",
         "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def print_profile(path: Path, top: int = 25) -> None:
    """Functions by own samples and by inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for frame in set(frames[1:]):  # the first frame is the thread
            inclusive[frame] += n
    print(f"  py-spy: {total} samples (the thread holding the GIL)")
    for title, counts in (("own", own), ("inclusive", inclusive)):
        print(f"  by {title} samples:")
        for frame, n in counts.most_common(top):
            print(f"    {100 * n / total:5.1f}%  {frame}")


def heap(run: Run, clouds: Path, objects: int, top: int = 25) -> None:
    """One resync and flush in this process under tracemalloc; what stays allocated, by line."""
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    settings = load_settings(
        flags={
            "kafka": {"bootstrap": run.kafka, "topic_prefix": f"{run.prefix}.status"},
            "site": {"name": SITE, "kinds": KINDS},
        }
    )
    with collect_less():
        poller = open_site_poller(settings, CollectorRegistry())
        gc.collect()
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
        poller.cycle(resync=True)
        poller.flush()
        gc.collect()
        after = tracemalloc.take_snapshot()
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    pid = os.getpid()
    print(f"  traced by Python at the peak of the resync: {traced_peak / 2**20:.1f} MiB; RSS now "
          f"{rss_kib(pid) / 1024:.0f} MB, peak {peak_rss_kib(pid) / 1024:.0f} MB")  # fmt: skip
    stats = after.compare_to(before, "lineno")
    held = sum(s.size_diff for s in stats)
    print(f"  held after one resync and flush: {held / 2**20:.1f} MiB, "
          f"{held / objects:,.0f} bytes an object; by line:")  # fmt: skip
    for stat in stats[:top]:
        frame = stat.traceback[0]
        print(f"    {stat.size_diff / 2**20:7.2f} MiB {stat.count_diff:9,d} blocks  "
              f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}")  # fmt: skip
    by_type = Counter(type(o).__name__ for o in gc.get_objects())
    print(f"  objects the collector tracks, most numerous: {by_type.most_common(8)}")
    poller.producer.close()


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the process's threads so far, by thread name (librdkafka's are rdk:*;
    Python's threads all show the process's name)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = re.sub(r"[0-9]+$", "", (task / "comm").read_text().strip())
        out[name] = out.get(name, 0.0) + stat_cpu_seconds(task / "stat")
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--ports", type=int, default=10_000)
    parser.add_argument("--volumes", type=int, default=3_000)
    parser.add_argument("--rest", type=float, default=60.0, help="seconds at rest after the sync")
    parser.add_argument("--profile", action="store_true", help="py-spy over the sync and rest")
    parser.add_argument("--heap", action="store_true", help="the poller in-process, tracemalloc")
    parser.add_argument("--bootstrap", help="a broker to use; default: a private one")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("-X", dest="librdkafka", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-e", dest="env", action="append", default=[], metavar="KEY=VALUE")
    a = parser.parse_args()
    objects = a.servers + a.ports + a.volumes
    extra_env = dict(item.split("=", 1) for item in a.env)
    settings = (
        f"1 site x {a.servers:,} servers / {a.ports:,} ports / {a.volumes:,} volumes "
        f"({objects:,} objects), one poller with defaults; poller env {extra_env or 'as is'}, "
        f"librdkafka {a.librdkafka or 'as is'}"
    )
    with bench_run("footprint", settings, a.bootstrap, quiet_port(), print) as run:
        procs = run.procs
        clouds = run.workdir / "clouds.yaml"
        procs.start(
            "sim",
            "sim",
            *flags(site=SITE, listen=f"127.0.0.1:{quiet_port()}", write_clouds_yaml=clouds,
                   servers=a.servers, ports=a.ports, volumes=a.volumes),
        )  # fmt: skip
        wait_until("the sim's clouds.yaml", clouds.exists, a.timeout, procs.check_alive)
        ensure_topics(run.kafka, f"{run.prefix}.status", [SITE])
        if a.heap:
            heap(run, clouds, objects)
            return
        procs.env.update(extra_env)
        started = time.monotonic()
        port = quiet_port()
        url = f"http://127.0.0.1:{port}/metrics"
        procs.env["OS_CLIENT_CONFIG_FILE"] = str(clouds)
        passed = [arg for setting in a.librdkafka for arg in ("-X", setting)]
        procs.start("poller", "produce", *flags(site=SITE, metrics_port=port, kinds=KINDS), *passed)
        pid = procs.children("poller")[0].pid
        # The poller's size before it holds anything: answering, nothing published yet.
        wait_until("the poller's /metrics", lambda: http_text(url), a.timeout, procs.check_alive)
        idle_kib, idle_cpu = rss_kib(pid), cpu_seconds(pid) or 0.0
        broker = None if a.bootstrap else LocalKafka(port=int(run.kafka.rsplit(":", 1)[1])).pid()
        broker_cpu = (cpu_seconds(broker) or 0.0) if broker else 0.0
        print(f"  poller answering after {time.monotonic() - started:.1f} s, RSS "
              f"{idle_kib / 1024:.0f} MB, {idle_cpu:.1f} CPU s; {load()}")  # fmt: skip
        profiler = spy(pid, run.workdir / "poller.spy") if a.profile else None
        try:
            wait_until(
                "the poller to publish every object",
                lambda: published(url) >= objects,
                a.timeout,
                procs.check_alive,
            )
        finally:
            if profiler is not None:
                profiler.send_signal(2)  # py-spy writes its output on SIGINT
                profiler.wait(30)
        synced = time.monotonic() - started
        sync_cpu = cpu_seconds(pid) or 0.0
        sync_peak = peak_rss_kib(pid)
        print(f"  synced {objects:,} objects in {synced:.1f} s: {sync_cpu:.1f} CPU s, peak RSS "
              f"{sync_peak / 1024:.0f} MB; {load()}")  # fmt: skip
        if broker:
            used = (cpu_seconds(broker) or 0.0) - broker_cpu
            print(f"  the broker over the sync: {used:.1f} CPU s "
                  f"({1e6 * used / objects:.0f} us an object)")  # fmt: skip
        at_sync = threads_cpu(pid)
        by_thread = ", ".join(f"{n} {c:.1f}" for n, c in list(at_sync.items())[:6])
        print(f"  CPU s by thread: {by_thread}")
        if profiler is not None:
            print_profile(run.workdir / "poller.spy")
        sim = procs.children("sim")[0].pid
        sim_cpu = cpu_seconds(sim) or 0.0
        profiler = spy(pid, run.workdir / "rest.spy") if a.profile else None
        rest_end = time.monotonic() + a.rest
        peak_rest = 0
        try:
            while time.monotonic() < rest_end:
                procs.check_alive()
                peak_rest = max(peak_rest, rss_kib(pid))
                time.sleep(SAMPLE_SECONDS)
        finally:
            if profiler is not None:
                profiler.send_signal(2)
                profiler.wait(30)
        rest_cpu = (cpu_seconds(pid) or 0.0) - sync_cpu
        at_rest = {n: c - at_sync.get(n, 0.0) for n, c in threads_cpu(pid).items()}
        by_thread = ", ".join(
            f"{n} {c:.2f}" for n, c in sorted(at_rest.items(), key=lambda i: -i[1])[:6]
        )
        print(f"  CPU s by thread at rest: {by_thread}")
        held = max(0, sync_peak - idle_kib) * 1024 / objects
        print(f"  the sim (1 site): peak RSS {peak_rss_kib(sim) / 1024:.0f} MB, {sim_cpu:.1f} "
              f"CPU s until synced, {(cpu_seconds(sim) or 0.0) - sim_cpu:.1f} at rest")  # fmt: skip
        print(f"  at rest {a.rest:g} s: {rest_cpu:.1f} CPU s, RSS up to {peak_rest / 1024:.0f} "
              f"MB, peak so far {peak_rss_kib(pid) / 1024:.0f} MB; {load()}")  # fmt: skip
        if a.profile:
            print_profile(run.workdir / "rest.spy")
    print(
        f"poller-footprint: {objects} objects: synced in {synced:.1f} s, {sync_cpu:.1f} CPU s "
        f"({1e6 * (sync_cpu - idle_cpu) / objects:.0f} us an object after start-up), "
        f"peak {sync_peak / 1024:.0f} MB "
        f"({held:,.0f} bytes an object over the idle poller); at rest {rest_cpu:.1f} CPU s in "
        f"{a.rest:g} s"
    )


if __name__ == "__main__":
    with stop_on_signals(interrupt):
        main()
