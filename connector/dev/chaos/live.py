"""Chaos with the whole data path live: a simulated site, its poller and the top consumer.

- `broker_restarts`: a private broker stopped and started (or frozen and thawed) `rounds` times
  while the site churns (creations, transitions, deletions) during each outage. Must hold: the
  sink equals the site's truth after each round, within 15 s of the broker answering again; then
  SIGTERM during an outage ends the poller and the consumer within 10 s each. Over the
  outages, each process logs a distinct error once per outage, then a count at most every
  10 s while it lasts and a line when it ends, never a line per occurrence.
- `hostile_objects`: the sim serves `hostile` objects with fields out of range (times off the
  calendar, integers past 64 bits, NaN and infinities, lone surrogates, ids too long, an id of
  5,000 digits, details over 1 MB, no id, wrong types: `/_sim/corrupt` with `hostile`) among
  good ones, from the start, while the site churns and a standby takes over from the active
  poller. Must hold: no process exits, every good object arrives (and no hostile one), and
  every hostile one is accounted for as a skip (`<kind>.unparseable` in the heartbeat), by
  both pollers.
- `site_faults`: for `duration` seconds the site answers a share of requests with 500, hangs
  every request for `spike` seconds now and then, and revokes every token each `token_every`
  seconds, while it churns. Must hold: no process exits, the heartbeat reports degraded, and
  once the faults stop the sink equals the truth within one resync interval.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

from connector.dev import free_port, free_port_run
from connector.dev.chaos import Outcome
from connector.dev.chaos.harness import (
    ChaosError,
    ChaosRun,
    Children,
    SinkRows,
    lines_per_error,
    wait_for,
)
from connector.dev.demo.observe import StatusMap, compare, metric_total, truth
from connector.dev.demo.processes import http_json, http_text
from connector.dev.local_kafka import LocalKafka
from connector.dev.sim import start_sim
from connector.dev.sim.server import RunningSim
from connector.kafka.reader import TopicReader
from connector.kafka.topics import ensure_site_topic
from connector.kafka.transactions import RETRY_LOG_EVERY

SITE = "chaos"
KINDS = ("server", "volume", "port")
#: Seconds within which the sink must converge once the broker answers again.
RECOVERY_LIMIT = 15.0
#: Seconds within which SIGTERM must end a process, whatever it is doing.
SHUTDOWN_LIMIT = 10.0
#: The shortest time between two lines counting one error that goes on (the transaction commit's
#: retry log; `RepeatedErrors` counts every 30 s).
LOG_COUNT_EVERY = RETRY_LOG_EVERY


@dataclass(frozen=True)
class SiteSize:
    servers: int = 300
    volumes: int = 300
    ports: int = 600


class Live:
    """A running sim, poller and consumer; `converged()` compares the sink with the truth (less
    the objects the sim serves corrupt, which must never arrive)."""

    def __init__(self, sim: RunningSim, children: Children, sink_url: str) -> None:
        self.sim = sim
        self.children = children
        self.rows = SinkRows(sink_url)
        self.poller_metrics = ""
        #: kind -> id -> corruption, of the objects the sim serves corrupt
        self.corrupt: dict[str, dict[str, str]] = {}
        #: the children that must be running
        self.watched: tuple[str, ...] = ("poller", "consumer")
        #: the arguments of `produce` every poller of the site runs with (but its metrics port)
        self.poller_args: tuple[str, ...] = ()

    def live_corrupt(self, kind: str) -> set[str]:
        """Ids of the kind's corrupt objects that still exist."""
        present = {key[2] for key in truth({SITE: self.sim.url}, [kind])}
        return present & set(self.corrupt.get(kind, {}))

    def expected(self) -> StatusMap:
        return {
            key: status
            for key, status in truth({SITE: self.sim.url}, KINDS).items()
            if key[2] not in self.corrupt.get(key[1], {})
        }

    def converged(self) -> bool:
        return compare(self.expected(), self.rows.statuses()).equal

    def difference(self) -> str:
        return str(compare(self.expected(), self.rows.statuses()))

    def check_alive(self) -> None:
        for name in self.watched:
            if not self.children.alive(name):
                raise ChaosError(
                    f"{name} exited with {self.children.exit_code(name)}: "
                    + self.children.log_tail(name)
                )

    def control(self, path: str, body: object = None, method: str | None = None) -> object:
        """Call the sim's control API (`/_sim/<path>`)."""
        if method == "DELETE":
            with urlopen(Request(f"{self.sim.url}/_sim/{path}", method="DELETE"), timeout=30):
                return None
        return http_json(f"{self.sim.url}/_sim/{path}", body)


@contextmanager
def live_site(
    bootstrap: str,
    workdir: Path,
    size: SiteSize,
    interval: float,
    resync_interval: float,
    sink_url: str | None = None,
    hostile: Mapping[str, int] | None = None,
    lease_timeout: float | None = None,
) -> Iterator[Live]:
    """Start a sim, its poller and the consumer (into `sink_url`, default a SQLite file); stop
    them all on the way out. `hostile`: kind -> how many of its objects the sim serves with
    hostile fields from the start (`/_sim/corrupt`), never to arrive. `lease_timeout`: the
    pollers' (`produce --lease-timeout`; its default when None)."""
    names = ChaosRun()
    run = names.run
    sink_url = sink_url or f"sqlite:///{workdir / f'top-{run}.sqlite'}"
    clouds = workdir / f"clouds-{run}.yaml"
    with start_sim(
        SITE, servers=size.servers, volumes=size.volumes, ports=size.ports, seed=5
    ) as sim:
        sim.write_clouds_yaml(clouds)
        children = names.children(
            workdir, bootstrap, sink_url, {"OS_CLIENT_CONFIG_FILE": str(clouds)}
        )
        live = Live(sim, children, sink_url)
        for kind, count in (hostile or {}).items():
            answer = live.control("corrupt", {"kind": kind, "count": count, "hostile": True})
            assert isinstance(answer, dict)
            live.corrupt[kind] = answer["corrupt"]
        # The topic is made (and its leaders waited for) before the poller starts, as a
        # deployment would with `topics ensure`: a poller reading a topic created a moment ago
        # could exit (issue 13, the site side's), and this suite is about what comes after.
        kafka = names.kafka(bootstrap)
        ensure_site_topic(kafka, SITE)
        TopicReader(kafka, f"{names.prefix}.{SITE}", from_beginning=True).close()
        try:
            metrics_port = free_port()
            live.poller_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            live.poller_args = (
                *("--site", SITE, "--interval", str(interval)),
                *("--resync-interval", str(resync_interval), "--kinds", ",".join(KINDS)),
                *(() if lease_timeout is None else ("--lease-timeout", str(lease_timeout))),
            )
            children.start(
                "poller", "produce", *live.poller_args, "--metrics-port", str(metrics_port)
            )
            children.start("consumer", "consume", "--batch-wait", "100")
            if wait_for(live.converged, 180, live.check_alive) is None:
                raise ChaosError(f"the first sync did not converge: {live.difference()}")
            yield live
        finally:
            children.stop_all()
            live.rows.close()


def broker_restarts(
    workdir: Path,
    *,
    rounds: int = 5,
    outage: float = 5.0,
    churn: int = 200,
    size: SiteSize = SiteSize(),
    interval: float = 2.0,
    resync_interval: float = 600.0,
    freeze: bool = False,
    stop: tuple[str, ...] = ("consumer", "poller"),
    echo: Callable[[str], None] = print,
    broker: LocalKafka | None = None,
) -> Outcome:
    """Run the scenario; see the module docstring. It starts its own broker (on free ports),
    and kills it at the end; or uses `broker`, a local one nobody else uses, and leaves it
    running (thawed) at the end.

    With `freeze` the broker is not stopped but frozen (SIGSTOP, then SIGCONT): clients see it
    hang rather than refuse, and no JVM has to start again (seconds instead of tens of them on
    a loaded machine). `stop` names the processes whose SIGTERM is timed at the end.
    """
    outcome = Outcome("broker frozen and thawed" if freeze else "broker stopped and started")
    own = broker is None
    if broker is None:
        broker = LocalKafka(port=free_port_run(2), state_dir=workdir / "kafka")
    try:
        started = time.monotonic()
        bootstrap = broker.start(echo=False, timeout=180)
        echo(f"  private broker at {bootstrap} after {time.monotonic() - started:.1f} s")
        with live_site(bootstrap, workdir, size, interval, resync_interval) as live:
            echo(f"  first sync done {time.monotonic() - started:.1f} s after the start")
            for n in range(1, rounds + 1):
                _outage_begins(broker, freeze)
                down = time.monotonic()
                made = live.control("churn", {"changes": churn})
                time.sleep(max(0.0, outage - (time.monotonic() - down)))
                _outage_ends(broker, freeze)
                answering = time.monotonic()
                recovery = wait_for(live.converged, 120, live.check_alive)
                row: dict[str, float | int | str] = {
                    "outage s": answering - down,
                    "recovery s": -1.0 if recovery is None else recovery,
                }
                if isinstance(made, dict):
                    row |= {k: int(v) for k, v in made.items()}
                outcome.rounds.append(row)
                echo(f"  round {n}/{rounds}: {row}")
                if recovery is None:
                    outcome.problems.append(f"round {n}: no convergence: {live.difference()}")
                elif recovery > RECOVERY_LIMIT:
                    outcome.problems.append(
                        f"round {n}: converged {recovery:.1f} s after the broker answered "
                        f"(limit {RECOVERY_LIMIT:g} s)"
                    )
            outages = sum(float(r["outage s"]) for r in outcome.rounds)
            _count_error_lines(live.children, rounds, outages, outcome)
            # The last state: the broker is down, and each process is told to stop.
            _outage_begins(broker, freeze)
            for name in stop:
                took = live.children.terminate(name, 30)
                outcome.figures[f"{name} exit after SIGTERM, broker down (s)"] = (
                    -1.0 if took is None else took
                )
                if took is None or took > SHUTDOWN_LIMIT:
                    outcome.problems.append(
                        f"{name} took {'over 30' if took is None else f'{took:.1f}'} s to exit "
                        f"on SIGTERM with the broker down (limit {SHUTDOWN_LIMIT:g} s)"
                    )
    finally:
        if own:
            # A throwaway broker (its state is in `workdir`): killed, not shut down cleanly,
            # which takes tens of seconds on a loaded machine and proves nothing here.
            broker.stop(timeout=0.0)
        elif freeze and (pid := broker.pid()) is not None:
            os.kill(pid, signal.SIGCONT)  # left as it was found: running
    recoveries = [float(r["recovery s"]) for r in outcome.rounds if float(r["recovery s"]) >= 0]
    outcome.figures.update(
        {
            "rounds": rounds,
            "objects": size.servers + size.volumes + size.ports,
            "changes per outage": churn,
            "poll interval (s)": interval,
            "resync interval (s)": resync_interval,
            "worst recovery (s)": max(recoveries, default=-1.0),
        }
    )
    return outcome


def _count_error_lines(children: Children, outages: int, seconds: float, out: Outcome) -> None:
    """Check that each process logged a distinct error once per outage plus its counts (at
    most one every LOG_COUNT_EVERY seconds) and the line saying it ended, not once per
    occurrence: librdkafka reports an unreachable broker on every reconnect attempt."""
    allowed = outages * 2 + math.ceil(seconds / LOG_COUNT_EVERY)
    for name in ("poller", "consumer"):
        counted = lines_per_error(children.log_text(name))
        error, lines = counted.most_common(1)[0] if counted else ("none", 0)
        out.figures[f"{name}: distinct errors logged"] = len(counted)
        out.figures[f"{name}: most lines about one error"] = lines
        if lines > allowed:
            out.problems.append(
                f"{name} logged {lines} lines about one error over {outages} outage(s) of "
                f"{seconds:.0f} s in all (allowed {allowed}): {error[:300]}"
            )


def site_faults(
    bootstrap: str,
    workdir: Path,
    *,
    duration: float = 300.0,
    error_ratio: float = 0.3,
    spike: float = 10.0,
    spike_every: float = 30.0,
    token_every: float = 60.0,
    churn_rate: float = 5.0,
    size: SiteSize = SiteSize(),
    interval: float = 2.0,
    resync_interval: float = 60.0,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Run the scenario; see the module docstring."""
    outcome = Outcome("site faults")
    with live_site(bootstrap, workdir, size, interval, resync_interval) as live:
        live.control("faults", {"status": 500, "ratio": error_ratio, "seconds": duration})
        live.control("churn", {"rate": churn_rate, "seconds": duration})
        started = time.monotonic()
        next_spike, next_revoke = started + spike_every, started + token_every
        beats: dict[str, int] = {}
        spikes = revocations = 0
        while (now := time.monotonic()) < started + duration:
            live.check_alive()
            if now >= next_spike:
                # Every request arriving in the next second hangs `spike` seconds.
                live.control("faults", {"delay": spike, "seconds": 1.0})
                spikes += 1
                next_spike += spike_every
            if now >= next_revoke:
                live.control("tokens", method="DELETE")
                revocations += 1
                next_revoke += token_every
            beat = live.rows.heartbeat(SITE) or "none"
            beats[beat] = beats.get(beat, 0) + 1
            time.sleep(1.0)
        live.control("faults", method="DELETE")
        echo(f"  faults over after {time.monotonic() - started:.0f} s; heartbeats seen {beats}")
        errors = metric_total(http_text(live.poller_metrics), "cascade_site_api_errors_total")
        limit = resync_interval + 2 * interval + spike
        converged = wait_for(live.converged, limit + 60, live.check_alive)
        live.check_alive()
        if not beats.get("degraded"):
            outcome.problems.append(f"the heartbeat never said degraded: {beats}")
        if converged is None or converged > limit:
            outcome.problems.append(
                f"not converged within one resync ({limit:g} s) after the faults: "
                + ("never" if converged is None else f"{converged:.1f} s")
            )
        outcome.figures.update(
            {
                "seconds of faults": duration,
                "share of requests answered 500": error_ratio,
                f"latency spikes of {spike:g} s": spikes,
                "token revocations": revocations,
                "poller API errors counted": int(errors),
                "heartbeat samples degraded": beats.get("degraded", 0),
                "heartbeat samples ok": beats.get("ok", 0),
                "seconds to converge after": -1.0 if converged is None else converged,
                "resync interval (s)": resync_interval,
            }
        )
    return outcome


def hostile_objects(
    bootstrap: str,
    workdir: Path,
    *,
    hostile: int = 10_000,
    good: int = 1_000,
    churn: int = 300,
    takeover: bool = True,
    interval: float = 2.0,
    resync_interval: float = 600.0,
    lease_timeout: float | None = None,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Run the scenario; see the module docstring. `hostile` objects in all and `good` ones of
    each of KINDS; `churn` changes after the first sync and after the take-over; `takeover`: a
    standby poller starts, and takes over when the active one is SIGKILLed (after the pollers'
    `lease_timeout`: `produce`'s default when None)."""
    outcome = Outcome("hostile API objects")
    n_kinds = len(KINDS)
    shares = {kind: hostile // n_kinds + (n < hostile % n_kinds) for n, kind in enumerate(KINDS)}
    size = SiteSize(good + shares["server"], good + shares["volume"], good + shares["port"])
    started = time.monotonic()
    with live_site(
        bootstrap,
        workdir,
        size,
        interval,
        resync_interval,
        hostile=shares,
        lease_timeout=lease_timeout,
    ) as live:
        echo(
            f"  {hostile:,} hostile and {n_kinds * good:,} good objects: every good one arrived "
            f"after {time.monotonic() - started:.1f} s"
        )

        def accounted() -> bool:
            skipped = _skips(live.poller_metrics)
            return all(skipped[kind] >= n for kind, n in shares.items())

        # Every hostile object is skipped at every listing that shows it: the first one shows all.
        if wait_for(accounted, 60, live.check_alive) is None:
            outcome.problems.append(
                f"skips counted {_skips(live.poller_metrics)} fall short of the hostile objects "
                f"{shares}"
            )

        def shown() -> int:
            details = live.rows.heartbeat_details(SITE)
            return sum(int(details.get(f"{kind}.unparseable") or 0) for kind in KINDS)

        # Distinct objects as far as the poller can tell them apart (nameless ones without an
        # id look alike), once a heartbeat came after the first listing.
        wait_for(lambda: shown() > 0, 30, live.check_alive)
        outcome.figures["unreadable objects the heartbeat shows"] = shown()

        def churned(when: str) -> float:
            live.control("churn", {"changes": churn})
            took = wait_for(live.converged, 180, live.check_alive)
            if took is None:
                outcome.problems.append(f"{when}: good objects missing: {live.difference()}")
            return -1.0 if took is None else took

        outcome.figures["seconds to converge after churn"] = churned("after churn")
        skipped = _skips(live.poller_metrics)
        if takeover:
            skipped = _take_over(live, outcome)
            outcome.figures["seconds to converge after churn, standby active"] = churned(
                "after the take-over"
            )
        live.check_alive()
        outcome.figures.update(
            {
                "hostile objects": hostile,
                **{f"hostile {kind}s": n for kind, n in shares.items()},
                "good objects at the start": n_kinds * good,
                "changes per churn": churn,
                "hostile objects skipped (the last active poller's count, every listing)": sum(
                    skipped.values()
                ),
                "process exits": 0,  # check_alive raised on any
            }
        )
        short = {kind for kind in KINDS if skipped.get(kind, 0) < len(live.live_corrupt(kind))}
        if short:
            outcome.problems.append(
                f"skips counted {skipped} fall short of the live hostile objects of {short}"
            )
    return outcome


def _take_over(live: Live, outcome: Outcome) -> dict[str, float]:
    """Start a standby, SIGKILL the active poller, wait for the standby to take over; its skip
    counts per kind once it has listed every kind."""
    metrics_port = free_port()
    standby_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    live.children.start(
        "standby", "produce", *live.poller_args, "--metrics-port", str(metrics_port)
    )
    live.watched = ("poller", "standby", "consumer")

    def active(url: str) -> float:
        return metric_total(http_text(url), "cascade_site_active")

    if (
        wait_for(
            lambda: active(standby_metrics) == 0 and active(live.poller_metrics),
            120,
            live.check_alive,
        )
        is None
    ):
        outcome.problems.append("the standby never stood by")
        return {}
    live.children.kill("poller")
    live.watched = ("standby", "consumer")
    killed = time.monotonic()
    if wait_for(lambda: active(standby_metrics) == 1, 120, live.check_alive) is None:
        outcome.problems.append("the standby never took over")
        return {}
    outcome.figures["seconds to take over"] = time.monotonic() - killed

    def listed_all() -> bool:
        counts = _skips(standby_metrics)
        return all(counts.get(kind, 0) >= len(live.live_corrupt(kind)) for kind in KINDS)

    wait_for(listed_all, 120, live.check_alive)
    return _skips(standby_metrics)


def _skips(metrics_url: str) -> dict[str, float]:
    """kind -> objects the poller skipped (every listing that showed them)."""
    text = http_text(metrics_url)
    name = "cascade_site_unparseable_objects_total"
    return {kind: metric_total(text, name, kind=kind) for kind in KINDS}


def _outage_begins(broker: LocalKafka, freeze: bool) -> None:
    if not freeze:
        broker.stop()
        return
    pid = broker.pid()
    if pid is None:
        raise ChaosError("the chaos broker is not running")
    os.kill(pid, signal.SIGSTOP)


def _outage_ends(broker: LocalKafka, freeze: bool) -> None:
    if not freeze:
        broker.start(echo=False, timeout=180)
        return
    pid = broker.pid()
    if pid is None:
        raise ChaosError("the chaos broker is not running")
    os.kill(pid, signal.SIGCONT)
