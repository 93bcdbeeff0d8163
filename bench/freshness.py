"""Freshness: how long a status change at a site takes to become a row at the top layer.

Steady churn (default 1,000 changes/s across servers, volumes and ports) on a simulated site;
a real Kafka; the poller and the top consumer as `cascade-connector` processes; the top layer an
HTTP endpoint in this process (the HTTP sink posts to it). For every status change the sim made
(its own change time) the delay is the first time the top layer received a record of that object
listed after the change and showing that state or a later one (the sink's applied time). Per
poll interval: p50, p99 and max, and how many changes never arrived (should be 0).

With `--notifications` a real RabbitMQ (Debian's, started here) carries the sim's notifications
and the poller listens (`produce --notifications`); `--notify-loss` drops a share of them, and
the delays of changes that were never notified are reported apart. With `--storm`, instead of
churn, a restart storm on a quiet site: site API requests and bytes of polling alone and with
notifications at the same interval (bench/out/freshness-storm.txt).

    .venv/bin/pip install -e '.[bench,notifications]'
    .venv/bin/python bench/freshness.py [--quick] [--interval 5]            # intervals 2, 5, 10
    .venv/bin/python bench/freshness.py --notifications --interval 30 [--notify-loss 0.3]
    .venv/bin/python bench/freshness.py --notifications --storm --interval 30
    .venv/bin/python bench/freshness.py --quick --intervals 2 --consumer-python OLD/.venv/bin/python

The last line is `p99 freshness S s (interval I s)` for `--interval` (in the mode asked for).
Plots: docs/img/freshness.png (polling alone), docs/img/freshness-notifications.png.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from common import KAFKA_PORT, broker
from prometheus_client.parser import text_string_to_metric_families

from connector.dev import free_port
from connector.dev.demo.processes import Processes, child_env, http_json, wait_until
from connector.dev.local_rabbit import LocalRabbit

KINDS = ("server", "volume", "port")
#: Kinds whose deleted objects vanish from listings: only a resync (every resync_interval, 600 s
#: by default) turns them into tombstones, so their deletions are left out of the delays.
VANISH = ("volume", "port")
LAST_POLL = "cascade_site_last_good_poll_timestamp_seconds"
UP = "cascade_site_notifications_up"
IMG = Path(__file__).parents[1] / "docs" / "img"
OUT = Path(__file__).parent / "out"


# -- the site, in its own process (its GIL is not ours) ----------------------------------------


def serve_site(options: dict[str, Any], ready: Any, stop: Any, log_path: str) -> None:
    """Child process: the sim, with its change log (and what it notified) written on stop."""
    from connector.dev.sim import start_sim

    changes: list[tuple[float, str, str, str, bool]] = []
    notified: list[tuple[float, str]] = []
    lags: list[float] = []

    def observe(action: str, obj: Any, old_status: str | None, now: float) -> None:
        if obj.kind in KINDS and (action != "update" or old_status != obj.status):
            changes.append((now, obj.kind, obj.id, obj.status, action == "delete"))

    sim = start_sim(options.pop("site"), **options)
    gc.freeze()  # the population, out of the collector's sight, as run_sim (the CLI) does
    sim.site.observers.append(observe)
    if sim.notifier is not None:

        def sent(_etype: str, event: Any) -> None:
            notified.append((event.at, event.object_id))
            lags.append(time.time() - event.at)

        sim.notifier.on_sent = sent
    ready.put({"url": sim.url, "cloud": sim.cloud, "entry": sim.clouds_yaml_entry()})
    stop.wait()
    counters = vars(sim.notifier.counters) if sim.notifier is not None else {}
    sim.stop()
    with open(log_path, "w") as fh:
        lag = {"p50": pct(lags, 0.5), "p99": pct(lags, 0.99), "max": max(lags, default=0.0)}
        counters = {**counters, "lag from change to publish": lag}
        json.dump({"changes": changes, "notified": notified, "notifier": counters}, fh)


# -- the top layer: an HTTP endpoint that notes when each record arrived ------------------------


class TopLayer:
    """Receives the HTTP sink's batches: (arrival, observed_at, status, deleted) per object."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[tuple[float, float, str | None, bool]]] = defaultdict(
            list
        )
        self.lock = threading.Lock()
        top = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                with top.lock:
                    for c in body["changes"]:
                        if c["op"] == "heartbeat" or c["kind"] not in KINDS:
                            continue
                        observed = (
                            datetime.fromisoformat(c["observed_at"]).timestamp()
                            if c.get("observed_at")
                            else now
                        )
                        top.rows[(c["kind"], c["id"])].append(
                            (now, observed, c.get("status"), c["op"] == "delete")
                        )
                answer = json.dumps({"applied": len(body["changes"])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def latest(self) -> dict[tuple[str, str], tuple[str | None, bool]]:
        with self.lock:
            return {key: rows[-1][2:] for key, rows in self.rows.items()}

    def snapshot(self) -> dict[tuple[str, str], list[tuple[float, float, str | None, bool]]]:
        with self.lock:
            return {key: list(rows) for key, rows in self.rows.items()}


# -- matching changes to rows ---------------------------------------------------------------


@dataclass
class Delays:
    notified: list[float] = field(default_factory=list)
    silent: list[float] = field(default_factory=list)
    missing: int = 0
    #: changes of volumes and ports deleted before the end (see `delays`)
    left_out: int = 0
    #: per change shown by a row: change -> the poller built the record (the site side: bus,
    #: listener, debounce, listing), and record built -> row (Kafka, the consumer, the sink)
    site_side: list[float] = field(default_factory=list)
    top_side: list[float] = field(default_factory=list)

    @property
    def all(self) -> list[float]:
        return self.notified + self.silent


def delays(
    changes: list[tuple[float, str, str, str, bool]],
    rows: dict[tuple[str, str], list[tuple[float, float, str | None, bool]]],
    notified: set[tuple[float, str]],
    window: tuple[float, float],
) -> Delays:
    """Per change in `window`: how long until the top layer showed it or a later change of the
    same object. The top layer's state of an object at a moment is the last row that had
    arrived; a change that a later one undid before any poll saw it (a flap) counts as shown
    when the top layer shows the state it ended in."""
    by_object: dict[tuple[str, str], list[tuple[float, tuple[str | None, bool]]]] = defaultdict(
        list
    )
    end = window[1]
    vanished = {(kind, oid) for at, kind, oid, _, deleted in changes if deleted and at < end}
    for at, kind, object_id, status, deleted in changes:
        by_object[(kind, object_id)].append((at, (None, True) if deleted else (status, False)))
    out = Delays()
    for key, history in by_object.items():
        never_listed = key not in rows and history[-1][1][1]
        if never_listed or (key[0] in VANISH and key in vanished):
            # Created and deleted between two polls (the top never had it, rightly); or a
            # volume or port deleted before the end: its last changes may never be listed, and
            # its deletion shows with the next resync. (Deletions after the window, in a later
            # run, do not matter: the object was listed alive until then.)
            out.left_out += sum(window[0] <= at < window[1] for at, _ in history)
            continue
        arrived = [(r[0], (None, True) if r[3] else (r[2], False)) for r in rows.get(key, [])]
        observed = [r[1] for r in rows.get(key, [])]
        arrival_times = [a for a, _ in arrived]
        for i, (at, _state) in enumerate(history):
            if not window[0] <= at < window[1]:
                continue
            # The moments the answer can change: each later change, each later arrival.
            moments = sorted({t for t, _ in history[i:]} | {a for a in arrival_times if a >= at})
            hit = None
            for moment in moments:
                shown_at = bisect.bisect_right(arrival_times, moment)
                if shown_at == 0:
                    continue
                shown = arrived[shown_at - 1][1]
                if any(state == shown for t, state in history[i:] if t <= moment):
                    hit = moment
                    built = observed[shown_at - 1]
                    if built >= at and moment == arrival_times[shown_at - 1]:
                        out.site_side.append(built - at)
                        out.top_side.append(moment - built)
                    break
            if hit is None:
                out.missing += 1
            elif (at, key[1]) in notified:
                out.notified.append(hit - at)
            else:
                out.silent.append(hit - at)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the run ----------------------------------------------------------------------------------


class Bench:
    """Kafka, (RabbitMQ), the site, the top layer and the consumer; pollers come and go."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="cascade-freshness-"))
        self.run_id = uuid.uuid4().hex[:8]
        self.site = f"fresh{self.run_id}"
        self.rabbit: LocalRabbit | None = None
        self.processes: Processes | None = None
        self.poller: Any = None
        self.metrics_port = 0
        self.ctx = multiprocessing.get_context("spawn")
        self.stop_site = self.ctx.Event()
        self.site_proc: Any = None
        self.consumer: Any = None
        self.top = TopLayer()
        #: what `stop` ends last: the broker, when this bench started it
        self.broker = ExitStack()

    def start(self) -> None:
        a = self.args
        # The broker named by the environment, else a local one on the default port: stopped by
        # its pid in `stop` if this bench started it (one already running is left running).
        bootstrap = self.broker.enter_context(
            broker(os.environ.get("CASCADE_KAFKA_BOOTSTRAP"), KAFKA_PORT)
        )
        if a.notifications:
            self.rabbit = LocalRabbit()
            self.rabbit.start()
        ready = self.ctx.Queue()
        options = {
            "site": self.site,
            "servers": a.objects,
            "volumes": a.objects,
            "ports": a.objects,
            "neutron_changed_since": "accept",
            "notify": self.rabbit.url if self.rabbit else None,
            "notify_loss": a.notify_loss,
        }
        self.site_log = self.work / "site.json"
        self.site_proc = self.ctx.Process(
            target=serve_site, args=(options, ready, self.stop_site, str(self.site_log))
        )
        self.site_proc.start()
        info = ready.get(timeout=300)
        self.sim_url = info["url"]
        clouds = self.work / "clouds.yaml"
        clouds.write_text(json.dumps({"clouds": {info["cloud"]: info["entry"]}}))
        env = child_env(
            {
                "OS_CLIENT_CONFIG_FILE": str(clouds),
                "CASCADE_KAFKA_BOOTSTRAP": bootstrap,
                "CASCADE_KAFKA_TOPIC_PREFIX": f"bench.fresh.{self.run_id}",
            }
        )
        self.processes = Processes(self.work, env)
        consume = ["consume", "--sink", self.top.url, "--group", f"fresh-{self.run_id}"]
        if a.batch_wait is not None:
            consume += ["--batch-wait", str(a.batch_wait)]
        self.consumer = self.processes.start("consumer", *consume, python=a.consumer_python)

    def stop(self) -> None:
        if self.processes is not None:
            self.processes.stop_all()
        if self.site_proc is not None:
            self.stop_site.set()
            self.site_proc.join(60)
            if self.site_proc.is_alive():
                self.site_proc.kill()
        if self.rabbit is not None:
            self.rabbit.remove()
        self.broker.close()

    def site_log_data(self) -> dict[str, Any]:
        self.stop_site.set()
        self.site_proc.join(120)
        self.site_proc = None
        return dict(json.loads(self.site_log.read_text()))

    # -- pollers ------------------------------------------------------------------------------

    def start_poller(self, interval: float, notifications: bool) -> None:
        assert self.processes is not None
        self.metrics_port = free_port()
        cmd = ["produce", "--site", self.site, "--interval", str(interval)]
        cmd += ["--metrics-port", str(self.metrics_port)]
        env = {}
        if notifications:
            assert self.rabbit is not None
            # The bus URL holds a password: the environment, not the command line `ps` shows.
            env["CASCADE_NOTIFICATIONS_URL"] = self.rabbit.url
        name = f"poller-{interval:g}-{int(notifications)}"
        self.poller = self.processes.start(name, *cmd, env=env)

        def ready() -> bool:
            m = self.scrape()
            polled = all(m.get((LAST_POLL, k)) for k in KINDS)
            return polled and (not notifications or m.get((UP, "")) == 1)

        wait_until("the poller", ready, 120, self.check)

    def stop_poller(self) -> None:
        if self.poller is not None:
            self.poller.terminate()
            self.poller.wait(30)
            self.poller = None

    def scrape(self) -> dict[tuple[str, str], float]:
        text = urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out: dict[tuple[str, str], float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, sample.labels.get("kind", ""))] += sample.value
        return out

    def truth(self) -> dict[tuple[str, str], tuple[str | None, bool]]:
        query = "&".join(f"kind={k}" for k in KINDS)
        objects = http_json(f"{self.sim_url}/_sim/truth?{query}")["objects"]
        return {(o["kind"], o["id"]): (o["status"], False) for o in objects}

    def converged(self) -> bool:
        """Every live object at the top as at the site; deleted volumes and ports may linger
        until the next resync."""
        truth = self.truth()
        latest = self.top.latest()
        if any(latest.get(key) != state for key, state in truth.items()):
            return False
        lingering = [k for k, v in latest.items() if k not in truth and not v[1]]
        return all(kind in VANISH for kind, _ in lingering)

    def wait_converged(self, timeout: float) -> float:
        assert self.processes is not None
        started = time.monotonic()
        wait_until("the top layer to equal the site", self.converged, timeout, self.check)
        return time.monotonic() - started

    def check(self) -> None:
        """Raise if the consumer or the current poller exited (pollers stopped on purpose before
        are not looked at)."""
        for name, proc in (("consumer", self.consumer), ("poller", self.poller)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the {name} exited with {proc.returncode}; logs in {self.work}")

    def site_stats(self) -> tuple[int, int]:
        stats = http_json(f"{self.sim_url}/_sim/stats")
        return sum(stats["requests"].values()), int(stats["bytes_sent"])


@dataclass
class Result:
    interval: float
    notifications: bool
    delays: Delays
    changes: int
    counters: dict[str, float]


def run_churn(
    bench: Bench, interval: float, notifications: bool
) -> tuple[float, float, dict[str, float]]:
    """Start a poller, churn, wait for the rows; returns the measured window and counters."""
    a = bench.args
    bench.start_poller(interval, notifications)
    bench.wait_converged(interval * 3 + 60)
    before = bench.scrape()
    warmup = max(3.0, min(interval, 10.0))
    http_json(f"{bench.sim_url}/_sim/churn", {"rate": a.rate, "seconds": warmup + a.seconds})
    start = time.time() + warmup
    end = start + a.seconds
    time.sleep(warmup + a.seconds)
    bench.wait_converged(interval * 2 + 60)
    after = bench.scrape()
    bench.stop_poller()
    counters = {
        name: sum(after.get((metric, k), 0) - before.get((metric, k), 0) for k in KINDS)
        for name, metric in (
            ("notifications", "cascade_site_notifications_received_total"),
            ("triggered polls", "cascade_site_notification_polls_total"),
            ("debounced", "cascade_site_notifications_debounced_total"),
            ("storm pauses", "cascade_site_notification_storm_pauses_total"),
            ("polls", "cascade_site_poll_duration_seconds_count"),
            ("poll seconds", "cascade_site_poll_duration_seconds_sum"),
            ("objects listed", "cascade_site_objects_seen_total"),
            ("published", "cascade_site_changes_published_total"),
        )
    }
    return start, end, counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller site, shorter churn")
    parser.add_argument("--interval", type=float, default=5.0, help="the last line's interval")
    parser.add_argument("--intervals", default=None, help="[default 2,5,10; --notifications: I]")
    parser.add_argument("--rate", type=float, default=1000.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=None, help="measured churn, seconds")
    parser.add_argument("--objects", type=int, default=None, help="servers = volumes = ports")
    parser.add_argument("--notifications", action="store_true")
    parser.add_argument("--notify-loss", type=float, default=0.0)
    parser.add_argument("--storm", action="store_true", help="a restart storm, not churn")
    parser.add_argument("--batch-wait", type=int, default=None, help="consumer --batch-wait MS")
    parser.add_argument(
        "--consumer-python",
        default=None,
        help="run the consumer with this interpreter (another checkout's .venv/bin/python: the "
        "consumer before a change, for a before-and-after)",
    )
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 20.0 if args.quick else 60.0
    if args.objects is None:
        args.objects = 2000 if args.quick else 5000
    if args.intervals is None:
        intervals = [args.interval] if args.notifications else [2.0, 5.0, 10.0]
    else:
        intervals = [float(x) for x in args.intervals.split(",")]
    if args.interval not in intervals:
        intervals.append(args.interval)
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"settings: {vars(args)}")
    bench = Bench(args)
    try:
        bench.start()
        if args.storm:
            storm(bench, args.interval)
            return
        results = []
        for interval in sorted(intervals):
            start, end, counters = run_churn(bench, interval, args.notifications)
            results.append((interval, start, end, counters))
        data = bench.site_log_data()
    except BaseException:
        print(f"logs kept in {bench.work}")
        raise
    finally:
        bench.stop()
    shutil.rmtree(bench.work, ignore_errors=True)
    rows = bench.top.snapshot()
    if os.environ.get("FRESHNESS_DUMP"):
        import pickle

        with open(os.environ["FRESHNESS_DUMP"], "wb") as fh:
            pickle.dump((data, rows, results), fh)
    notified = {(at, object_id) for at, object_id in data["notified"]}
    changes = [tuple(c) for c in data["changes"]]
    report: list[Result] = []
    mode = "with notifications" if args.notifications else "polling alone"
    print(f"\nfreshness, {mode}, {args.rate:g} changes/s, {args.objects} servers/volumes/ports:")
    print(
        f"{'interval':>9} {'changes':>8} {'p50':>7} {'p99':>7} {'max':>7} {'missing':>8} "
        f"{'left out':>9}",
        end="",
    )
    print("   un-notified: n, p99, max" if args.notifications else "")
    for interval, start, end, counters in results:
        d = delays(changes, rows, notified, (start, end))
        everything = d.all
        report.append(Result(interval, args.notifications, d, len(everything), counters))
        print(
            f"{interval:>8g}s {len(everything):>8} {pct(everything, 0.5):>6.2f}s "
            f"{pct(everything, 0.99):>6.2f}s {max(everything, default=float('nan')):>6.2f}s "
            f"{d.missing:>8} {d.left_out:>9}",
            end="",
        )
        if args.notifications:
            print(
                f"   {len(d.silent)}, {pct(d.silent, 0.99):.2f}s, "
                f"{max(d.silent, default=float('nan')):.2f}s"
            )
        else:
            print()
    print("\nwhere the time goes (changes shown by the record of a poll after them):")
    for r in report:
        d = r.delays
        print(
            f"  interval {r.interval:g}s: change -> record built p50 {pct(d.site_side, 0.5):.2f}s "
            f"p99 {pct(d.site_side, 0.99):.2f}s; record built -> row p50 "
            f"{pct(d.top_side, 0.5):.2f}s p99 {pct(d.top_side, 0.99):.2f}s"
        )
    if args.notifications:
        print(f"\nnotifier: {data['notifier']}")
        for r in report:
            print(f"interval {r.interval:g}s: {r.counters}")
    plot(report, args)
    last = next(r for r in report if r.interval == args.interval)
    print(f"p99 freshness {pct(last.delays.all, 0.99):.2f} s (interval {args.interval:g} s)")


def storm(bench: Bench, interval: float) -> None:
    """Site API cost of a restart storm: polling alone, then with notifications."""
    a = bench.args
    lines = []
    for notifications in (False, True):
        bench.start_poller(interval, notifications)
        bench.wait_converged(interval * 3 + 60)
        urlopen_delete(f"{bench.sim_url}/_sim/stats")
        began = time.monotonic()
        seconds = 10.0
        http_json(f"{bench.sim_url}/_sim/storm", {"flaps": 3, "seconds": seconds})
        time.sleep(seconds)
        converge = bench.wait_converged(interval * 3 + 120) + seconds
        # The same window for both: the storm and two intervals after it.
        rest = seconds + 2 * interval - (time.monotonic() - began)
        if rest > 0:
            time.sleep(rest)
        requests, sent = bench.site_stats()
        counters = bench.scrape()
        polls = sum(counters.get(("cascade_site_notification_polls_total", k), 0) for k in KINDS)
        pauses = sum(
            counters.get(("cascade_site_notification_storm_pauses_total", k), 0) for k in KINDS
        )
        bench.stop_poller()
        mode = "with notifications" if notifications else "polling alone"
        lines.append(
            f"{mode:<20} requests {requests:>6}  bytes {sent / 1e6:>7.1f} MB  converged "
            f"{converge:>5.1f} s after the storm began  triggered polls {polls:g}, "
            f"storm pauses {pauses:g}"
        )
        print(lines[-1])
    print(f"storm: {a.objects} servers/volumes/ports, 3 flaps in 10 s, interval {interval:g} s")


def urlopen_delete(url: str) -> None:
    from urllib.request import Request

    urlopen(Request(url, method="DELETE"), timeout=30).read()


def plot(report: list[Result], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in report:
        values = sorted(r.delays.all)
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.plot(values, ys, label=f"interval {r.interval:g} s (p99 {pct(values, 0.99):.2f} s)")
    mode = "with notifications" if args.notifications else "polling alone"
    loss = f", {args.notify_loss:.0%} of notifications lost" if args.notify_loss else ""
    ax.set_title(f"change at the site -> row at the top, {mode}{loss}, {args.rate:g} changes/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("share of changes")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    name = "freshness-notifications.png" if args.notifications else "freshness.png"
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=110)
    print(f"plot saved to {IMG / name}")


if __name__ == "__main__":
    main()
