"""One restart storm, three ways of keeping the top layer in sync, measured side by side.

The same simulated sites storm once; at the same time:

1. **push every change**: one top-layer call per status change, replayed as it happens from the
   sims' change logs (`/_sim/changes`) into the top-layer service;
2. **the PoC's proxy polling**: a poller at the top lists each site every 5 s with
   `changes-since` (Cinder `updated_at=gte:`; Neutron, which refuses `changed_since`, in full)
   and `limit=50`, paging through, and sends one update per object whose status it sees changed;
3. **cascade-connector**: a poller per site (`produce`, its defaults) and two consumer groups
   over the same topics, one with its defaults and one with the top layer limited to a slow rate.

Every strategy writes to the same kind of top-layer service the HTTP sink speaks to (`POST` a
JSON `{"batch_id", "changes": [...]}`), one path per strategy, served by this script. Printed per
strategy: top-layer calls and rows, site API requests and bytes (the sims' own counters, filed
by User-Agent), time from the storm's start until the top layer equals the sites' truth, peak
calls in one second. Saves docs/img/compare.png: calls per second, strategies on one axis.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/compare.py [--quick] [--sites 3 --servers 5000 ...]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import (
    IMG,
    KINDS,
    Progress,
    Run,
    bench_run,
    load,
    start_consumer,
    start_sites,
    wait_answering,
    wait_storm_over,
)

from connector.dev.demo.observe import StatusMap, compare, login, next_link, scrape_total, truth
from connector.dev.demo.processes import DemoError, Processes, http_json
from connector.ops.signals import interrupt, stop_on_signals

#: The User-Agent product names the sims file requests under.
PROXY_AGENT = "poc-proxy"
POLLER_AGENT = "openstacksdk"
STRATEGIES = ("push", "proxy", "cascade", "cascade-slow")
LABELS = {
    "push": "push every change",
    "proxy": "PoC proxy polling (5 s, limit 50)",
    "cascade": "cascade-connector (defaults)",
    "cascade-slow": "cascade-connector, top layer at a slow rate",
}


# -- the top layer -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """What one strategy's top layer holds and how it was called."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    held: dict[tuple[str, str, str], tuple[int, str | None]] = field(default_factory=dict)
    calls: int = 0
    rows: int = 0
    #: calls per whole second since the bench's clock started
    per_second: Counter[int] = field(default_factory=Counter)

    def apply(self, changes: list[dict[str, Any]], second: int) -> None:
        with self.lock:
            self.calls += 1
            self.rows += len(changes)
            self.per_second[second] += 1
            for change in changes:
                if change["op"] == "heartbeat":
                    continue
                key = (change["site"], change["kind"], change["id"])
                status = None if change["op"] == "delete" else change["status"]
                if self.held.get(key, (-1, None))[0] < change["sequence"]:
                    self.held[key] = (change["sequence"], status)

    def statuses(self) -> StatusMap:
        with self.lock:
            return {key: status for key, (_, status) in self.held.items() if status is not None}

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.calls, self.rows


class TopLayer:
    """The top-layer service on loopback: `POST /<strategy>` with the HTTP sink's body."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.ledgers = {name: Ledger() for name in STRATEGIES}
        ledgers = self.ledgers

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ledger = ledgers.get(self.path.strip("/"))
                if ledger is None:
                    self.send_error(404)
                    return
                ledger.apply(body["changes"], int(time.monotonic() - t0))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                """Counted in the ledgers, not logged."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)

    @contextmanager
    def running(self) -> Iterator[TopLayer]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


class Caller:
    """One keep-alive connection to the top layer, one POST per call, as a pushing agent."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.path = parts.path
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)

    def send(self, change: dict[str, Any]) -> None:
        body = json.dumps({"batch_id": "", "changes": [change]}).encode()
        self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise DemoError(f"top layer answered {response.status} to {self.path}")

    def close(self) -> None:
        self.conn.close()


def upsert(
    site: str, kind: str, object_id: str, status: str | None, sequence: int
) -> dict[str, Any]:
    return {
        "op": "delete" if status is None else "upsert",
        "site": site,
        "kind": kind,
        "id": object_id,
        "status": status,
        "sequence": sequence,
    }


# -- strategy 1: push every change -------------------------------------------------------------


def push(site: str, sim: str, top: str, stop: threading.Event) -> None:
    """Tail the site's change log; one top-layer call per entry."""
    caller = Caller(f"{top}/push")
    position = 0
    try:
        while not stop.is_set():
            page = http_json(f"{sim}/_sim/changes?after={position}&limit=5000")
            for n, (_at, kind, object_id, status) in enumerate(page["changes"]):
                if stop.is_set():
                    return
                caller.send(upsert(site, kind, object_id, status, position + n + 1))
            if page["next"] == position:
                stop.wait(0.05)
            position = page["next"]
    finally:
        caller.close()


# -- strategy 2: the PoC's proxy polling -------------------------------------------------------


#: (catalog type, path, collection key, incremental filter or None for a full listing, headers)
PROXY_LISTINGS: tuple[tuple[str, str, str, str | None, dict[str, str]], ...] = (
    ("compute", "/servers/detail?all_tenants=1&limit=50", "servers", "&changes-since={}", {}),
    (
        "block-storage",
        "/volumes/detail?all_tenants=1&limit=50",
        "volumes",
        "&updated_at=gte:{}",
        {"OpenStack-API-Version": "volume 3.60"},
    ),
    ("network", "/v2.0/ports?limit=50", "ports", None, {}),
)
PROXY_INTERVAL = 5.0
#: The original proxy moved its watermark back by 3 s, for clock skew.
PROXY_SKEW = 3.0


def proxy(site: str, clouds: Path, top: str, stop: threading.Event) -> None:
    """List the site every 5 s; one top-layer call per object whose status changed."""
    caller = Caller(f"{top}/proxy")
    seen: dict[tuple[str, str], str | None] = {}
    sequence = 0
    since: float | None = None
    try:
        session = login(clouds, f"{site}", f"{PROXY_AGENT}/1")
        while not stop.is_set():
            started = time.time()
            for service, path, key, incremental, headers in PROXY_LISTINGS:
                kind = key.removesuffix("s")
                first = session.endpoints[service] + path
                if incremental and since is not None:
                    first += incremental.format(
                        datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                    )
                url: str | None = first
                listed: set[str] = set()
                while url:
                    page = session.get(url, headers)
                    for obj in page[key]:
                        status = None if obj.get("status") == "DELETED" else obj["status"]
                        listed.add(obj["id"])
                        if seen.get((kind, obj["id"]), "?") != status:
                            seen[(kind, obj["id"])] = status
                            sequence += 1
                            caller.send(upsert(site, kind, obj["id"], status, sequence))
                    url = next_link(page, key)
                if incremental is None:
                    for gone in [k for k, s in seen.items() if k[0] == kind and k[1] not in listed]:
                        if seen[gone] is not None:
                            seen[gone] = None
                            sequence += 1
                            caller.send(upsert(site, kind, gone[1], None, sequence))
            since = started - PROXY_SKEW
            stop.wait(max(0.0, started + PROXY_INTERVAL - time.time()))
    finally:
        caller.close()


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Options:
    sites: int
    servers: int
    volumes: int
    ports: int
    flaps: int
    storm_seconds: float
    changed: float
    slow_rate: float
    converge_timeout: float
    bootstrap: str | None
    kafka_port: int
    plot: Path


def parse() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sites: about two minutes")
    parser.add_argument("--sites", type=int)
    parser.add_argument("--servers", type=int)
    parser.add_argument("--volumes", type=int)
    parser.add_argument("--ports", type=int)
    parser.add_argument("--flaps", type=int, default=3)
    parser.add_argument("--storm-seconds", type=float, default=10.0)
    parser.add_argument(
        "--changed", type=float, default=0.1, help="fraction of objects the storm ends changed"
    )
    parser.add_argument("--slow-rate", type=float, default=500.0, help="rows/s at the top")
    parser.add_argument("--converge-timeout", type=float)
    parser.add_argument("--bootstrap", help="an existing Kafka (default: a local broker)")
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--plot", type=Path, default=IMG / "compare.png")
    a = parser.parse_args()
    quick = a.quick
    return Options(
        sites=a.sites or (2 if quick else 3),
        servers=a.servers if a.servers is not None else (1500 if quick else 5000),
        volumes=a.volumes if a.volumes is not None else (1500 if quick else 5000),
        ports=a.ports if a.ports is not None else (3000 if quick else 10000),
        flaps=a.flaps,
        storm_seconds=a.storm_seconds,
        changed=a.changed,
        slow_rate=a.slow_rate,
        converge_timeout=a.converge_timeout or (180.0 if quick else 600.0),
        bootstrap=a.bootstrap,
        kafka_port=a.kafka_port,
        plot=a.plot,
    )


def agent(argv: list[str]) -> None:
    """`compare.py agent push SITE SIM_URL TOP_URL` or `agent proxy SITE CLOUDS TOP_URL`: one
    strategy's agent for one site, in a process of its own (so that it does not share a GIL
    with the top layer), until SIGTERM."""
    what, site, source, top = argv
    stop = threading.Event()
    with stop_on_signals(stop.set):
        if what == "push":
            push(site, source, top, stop)
        else:
            proxy(site, Path(source), top, stop)


def main() -> None:
    if sys.argv[1:2] == ["agent"]:
        agent(sys.argv[2:])
        return
    o = parse()
    echo = print
    bootstrap = o.bootstrap or os.environ.get("CASCADE_KAFKA_BOOTSTRAP")
    with bench_run("compare", str(o), bootstrap, o.kafka_port, echo) as bench:
        top = TopLayer(time.monotonic())
        with top.running():
            converged = run(o, bench, top, echo)
    raise SystemExit(0 if converged else 1)


def run(o: Options, bench: Run, top: TopLayer, echo: Callable[[str], None]) -> bool:
    procs, workdir, prefix = bench.procs, bench.workdir, bench.prefix
    names = [f"site-{chr(ord('a') + i)}" for i in range(o.sites)]
    counts = {"servers": o.servers, "volumes": o.volumes, "ports": o.ports}
    echo(f"[1/4] {o.sites} simulated sites of {sum(counts.values()):,} objects ({counts})")
    sims, metrics = start_sites(bench, names, counts)
    for name, rate in (("cascade", None), ("cascade-slow", o.slow_rate)):
        options: dict[str, object] = {
            "sink": f"{top.url}/{name}",
            "group": f"{prefix}.{name}",
            "dead_letter_topic": f"{prefix}.deadletter.{name}",
        }
        if rate is not None:
            options["max_rate"] = rate
        metrics.append(start_consumer(procs, name, **options))
    wait_answering(procs, metrics)
    script = Path(__file__).resolve()
    for site, url in sims.items():
        clouds = str(workdir / f"clouds-{site}.yaml")
        procs.start(f"proxy-{site}", "agent", "proxy", site, clouds, top.url, script=script)
        # The push agents tail change logs that stay empty until recording starts after the sync.
        procs.start(f"push-{site}", "agent", "push", site, url, top.url, script=script)

    echo("[2/4] initial sync: every strategy's top layer equal to the sites' truth")
    synced = converge(["proxy", "cascade", "cascade-slow"], top, sims, procs, metrics, echo, 300)
    if len(synced) < 3:
        echo(f"FAILED: the initial sync did not converge ({sorted(synced)} did)")
        return False
    for url in sims.values():
        http_json(f"{url}/_sim/changes", {"record": True})
    for key, status in truth(sims, KINDS).items():
        top.ledgers["push"].held[key] = (0, status)

    echo(
        f"[3/4] restart storm in every site: {o.flaps} flaps within {o.storm_seconds:g} s, "
        f"{o.changed:.0%} of the objects end changed; {load()}"
    )
    before = site_load(sims)
    calls_before = {name: ledger.counts() for name, ledger in top.ledgers.items()}
    storm_at = time.monotonic()
    for url in sims.values():
        answer = http_json(
            f"{url}/_sim/storm",
            {
                "flaps": o.flaps,
                "seconds": o.storm_seconds,
                "kinds": list(KINDS),
                "changed": o.changed,
            },
        )
        if "changed" not in answer:
            echo(
                "  note: this sim has no 'changed' storm option (issue 10's branch not merged): "
                "every object ends where it started"
            )
    wait_storm_over(
        procs, sims, lambda: echo(f"  storm under way: {_calls(top, calls_before)}; {load()}")
    )
    storm_seconds = time.monotonic() - storm_at
    echo(f"[4/4] the storm took {storm_seconds:.1f} s; converging; {load()}")
    done = converge(
        list(STRATEGIES), top, sims, procs, metrics, echo, o.converge_timeout, since=storm_at
    )
    after = site_load(sims)
    changes = sum(int(http_json(f"{u}/_sim/stats")["status_changes"]) for u in sims.values())
    report(o, top, sims, done, before, after, calls_before, storm_at, storm_seconds, changes, echo)
    plot(o, top, storm_at, storm_seconds, done, o.plot)
    echo(f"plot saved to {o.plot}")
    return len(done) == len(STRATEGIES)


@dataclass
class Converged:
    """When a strategy's top layer began to equal the truth for good, and its ledger then."""

    seconds: float
    calls: int
    rows: int


#: A strategy counts as converged once it has been equal to the truth (and, for push, had
#: nothing left to send) for this long, and, for cascade-connector, also has no consumer lag
#: left: longer than a poll interval, so that a top layer that only passes through the truth
#: on its way elsewhere does not count.
SETTLE = 12.0
#: Strategies whose "nothing left to send" is a consumer group's lag (see `converge`).
LAGGING = ("cascade", "cascade-slow")


def converge(
    names: list[str],
    top: TopLayer,
    sims: dict[str, str],
    procs: Processes,
    metrics: list[str],
    echo: Callable[[str], None],
    timeout: float,
    since: float | None = None,
) -> dict[str, Converged]:
    """Per strategy: seconds from `since` (or from now) to the start of its final stretch of
    being equal to the sites' truth (read once: nothing changes at the sites any more), checked
    every second, with the calls and rows it had made by then."""
    expected = truth(sims, KINDS)
    start = since if since is not None else time.monotonic()
    deadline = time.monotonic() + timeout
    streaks: dict[str, Converged] = {}
    progress = Progress()
    consumers = metrics[-2:]
    while True:
        procs.check_alive()
        now = time.monotonic()
        idle = _idle(top, sims, consumers)
        behind = {}
        for name in names:
            result = compare(expected, top.ledgers[name].statuses())
            # A consumer group's lag is not steadily zero even when all is applied: every
            # site's heartbeat (each 5 s) is lag until it is applied and committed. So for
            # cascade-connector a lag only puts off the end of a stretch of equality; it does
            # not end it (a backlog that matters makes the top layer unequal, which does).
            lag_only = name in LAGGING and result.equal and not idle[name]
            if not (result.equal and (idle[name] or lag_only)):
                streaks.pop(name, None)
                behind[name] = result.behind if not result.equal else "equal, still sending"
                continue
            if name not in streaks:
                streaks[name] = Converged(now - start, *top.ledgers[name].counts())
            if now - start - streaks[name].seconds < SETTLE or lag_only:
                behind[name] = "equal, settling" if not lag_only else "equal, lag left"
        settled = [n for n in names if n in streaks and n not in behind]
        if len(settled) == len(names) or now > deadline:
            for name in settled:
                echo(f"  {LABELS[name]}: equal to the truth from {streaks[name].seconds:.1f} s on")
            return {name: streaks[name] for name in settled}
        if progress.due():
            echo("  " + "; ".join(f"{n} {b}" for n, b in behind.items()) + f"; {load()}")
        time.sleep(1.0)


def logged(sims: dict[str, str]) -> int:
    """Entries in the sims' change logs: the calls a push-every-change design makes."""
    return sum(
        int(http_json(f"{url}/_sim/changes?after=0&limit=1")["length"]) for url in sims.values()
    )


def _idle(top: TopLayer, sims: dict[str, str], consumers: list[str]) -> dict[str, bool]:
    """Whether each strategy has nothing left to send: push has sent its whole change log,
    each consumer group has no lag (the proxy's own polls are all it has)."""
    pushed = top.ledgers["push"].counts()[0]
    lag = [scrape_total([url], "cascade_consumer_lag_records") for url in consumers]
    return {
        "push": pushed >= logged(sims),
        "proxy": True,
        "cascade": lag[0] == 0,
        "cascade-slow": lag[1] == 0,
    }


def _calls(top: TopLayer, before: dict[str, tuple[int, int]]) -> str:
    return ", ".join(
        f"{name} {ledger.counts()[0] - before[name][0]:,} calls"
        for name, ledger in top.ledgers.items()
    )


def site_load(sims: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Requests and bytes per client, summed over the sites."""
    out: Counter[str] = Counter()
    out_bytes: Counter[str] = Counter()
    for url in sims.values():
        for client, c in http_json(f"{url}/_sim/stats")["clients"].items():
            out[client] += c["requests"]
            out_bytes[client] += c["bytes_sent"]
    return {client: (out[client], out_bytes[client]) for client in out}


def report(
    o: Options,
    top: TopLayer,
    sims: dict[str, str],
    done: dict[str, Converged],
    before: dict[str, tuple[int, int]],
    after: dict[str, tuple[int, int]],
    calls_before: dict[str, tuple[int, int]],
    storm_at: float,
    storm_seconds: float,
    changes: int,
    echo: Callable[[str], None],
) -> None:
    first = int(storm_at - top.t0)

    def api(agent: str | None) -> tuple[int, int]:
        if agent is None:
            return 0, 0
        a, b = after.get(agent, (0, 0)), before.get(agent, (0, 0))
        return a[0] - b[0], a[1] - b[1]

    agents = {
        "push": None,
        "proxy": PROXY_AGENT,
        "cascade": POLLER_AGENT,
        "cascade-slow": POLLER_AGENT,
    }
    rows = []
    for name, ledger in top.ledgers.items():
        calls, written = (done[name].calls, done[name].rows) if name in done else ledger.counts()
        requests, sent = api(agents[name])
        peak = max((n for s, n in ledger.per_second.items() if s >= first), default=0)
        rows.append(
            (
                LABELS[name],
                f"{calls - calls_before[name][0]:,}",
                f"{written - calls_before[name][1]:,}",
                f"{requests:,}",
                f"{sent / 1e6:,.1f} MB",
                f"{done[name].seconds:.1f} s" if name in done else "not within the timeout",
                f"{peak:,}",
            )
        )
    head = (
        "strategy",
        "top calls",
        "top rows",
        "site API req",
        "site API bytes",
        "converged",
        "peak calls/s",
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    echo(
        f"\nOne storm: {o.sites} sites x {o.servers + o.volumes + o.ports:,} objects, {o.flaps} "
        f"flaps asked within {o.storm_seconds:g} s (took {storm_seconds:.1f} s on this machine), "
        f"{o.changed:.0%} asked to end changed; {changes:,} status changes at the sites; slow "
        f"rate {o.slow_rate:g} rows/s. Top-layer calls and rows: from the storm's start until that "
        f"strategy equalled the truth for good; site API load: from the storm's start until every "
        f"strategy had (the same window for both pollers); {load()}"
    )
    for r in [head, *rows]:
        echo(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    echo(
        "  (cascade-connector's two consumer groups read the same pollers' topics, so they share "
        "one site API load; push reads the sims' change logs, no API)"
    )
    push_made = top.ledgers["push"].counts()[0] - calls_before["push"][0]
    push_calls = logged(sims)
    if push_made < push_calls:
        echo(
            f"push every change had made {push_made:,} of its {push_calls:,} calls (one per "
            f"status change in the sims' change logs) when the measurement ended: the replay is "
            f"bounded by this machine, not by the design; the ratio below uses the {push_calls:,}"
        )
    cascade_calls = (
        done["cascade"].calls if "cascade" in done else top.ledgers["cascade"].counts()[0]
    ) - calls_before["cascade"][0]
    echo(
        f"push every change / cascade-connector top-layer calls: "
        f"{push_calls / max(1, cascade_calls):,.0f}x; site API bytes proxy / cascade-connector: "
        f"{api(PROXY_AGENT)[1] / max(1, api(POLLER_AGENT)[1]):.1f}x"
    )


def plot(
    o: Options,
    top: TopLayer,
    storm_at: float,
    storm_seconds: float,
    done: dict[str, Converged],
    path: Path,
) -> None:
    import matplotlib  # here, not at the top: the agents start faster without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.typing import ColorType

    first = int(storm_at - top.t0)
    last = int(time.monotonic() - top.t0)
    fig, ax = plt.subplots(figsize=(10, 5))
    colors: dict[str, ColorType] = {}
    for name, ledger in top.ledgers.items():
        seconds = list(range(first - 5, last + 1))
        with ledger.lock:
            series = [ledger.per_second.get(s, 0) for s in seconds]
        (line,) = ax.plot(
            [s - first for s in seconds], series, drawstyle="steps-post", label=LABELS[name]
        )
        colors[name] = line.get_color()
    ax.axvspan(0, storm_seconds, color="orange", alpha=0.15, label="restart storm")
    for name, converged in done.items():
        ax.axvline(converged.seconds, color=colors[name], linestyle=":", linewidth=1)
    ax.set_title(
        f"{o.sites} sites x {o.servers + o.volumes + o.ports:,} objects, {o.flaps} flaps in "
        f"{o.storm_seconds:g} s, {o.changed:.0%} end changed: top-layer calls per second",
        fontsize="medium",
    )
    ax.set_xlabel("seconds since the storm began (dotted: that strategy equals the truth)")
    ax.set_ylabel("top-layer calls per second")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process this started.
    with stop_on_signals(interrupt):
        main()
