"""The chaos suite at full size: crashes, broker outages, site faults and fuzzed input, each with
its checks and figures (connector/dev/chaos/ has the scenarios; the tests run small versions).

Scenarios (all by default; pick with --scenario a,b):
  kill           consumer SIGKILLed 20 times at random points during 100,000 updates (PostgreSQL
                 sink with a regression trigger)
  broker         a private broker stopped and started 5 times, churn during each outage
                 (--outage seconds each, 5 by default), each process logging a distinct
                 error once per outage plus counts; then SIGTERM to the consumer and the
                 poller with the broker down
  faults         5 minutes of site faults: 30% 5xx, 10 s latency spikes, tokens revoked each minute
  fuzz-records   100,000 fuzzed record values on a site topic
  fuzz-settings  2,000 fuzzed settings files and environment values (hypothesis)
  hostile        100,000 hostile messages in a site topic (other sites' records, sizes near
                 Kafka's limits, ...) among 10,000 good ones, read by a real consume into SQLite;
                 then 10,000 hostile API objects among 3,000 good ones, served by the sim to a
                 real produce, through churn and a standby's take-over (bench/hostile.py runs
                 only this one)

Prints progress and figures, saves them as JSON in bench/out/chaos.json and a plot of the broker
rounds in bench/out/chaos-broker.png. Exit 1 if any check failed. `--quick` runs small sizes.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/chaos.py [--quick] [--scenario kill,broker]
    .venv/bin/python bench/chaos.py --scenario broker --outage 60   # issue 26's 60 s outages
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from common import KAFKA_PORT, broker

from connector.dev.chaos import Outcome
from connector.dev.chaos.fuzz import fuzz_records, fuzz_settings, hostile_records
from connector.dev.chaos.kill import consumer_kills
from connector.dev.chaos.live import SiteSize, broker_restarts, hostile_objects, site_faults
from connector.dev.local_postgres import LocalPostgres

OUT = Path(__file__).parent / "out"
SCENARIOS = ("kill", "broker", "faults", "fuzz-records", "fuzz-settings", "hostile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes (a few minutes).")
    parser.add_argument("--scenario", default=",".join(SCENARIOS), help="Comma-separated.")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("CASCADE_KAFKA_BOOTSTRAP"),
        help="Kafka for the scenarios that do not stop it [default: the local broker].",
    )
    parser.add_argument("--resync-interval", type=float, default=None, help="Poller resyncs.")
    parser.add_argument("--outage", type=float, default=None, help="Seconds of each broker outage.")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")

    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"load average at start: {os.getloadavg()}")
    # The broker named, else a local one on the default port: stopped by its pid at the end if
    # this bench started it (one already running is used and left running).
    with broker(args.bootstrap, KAFKA_PORT) as bootstrap:
        workdir = Path(tempfile.mkdtemp(prefix="cascade-chaos-"))
        print(f"Kafka at {bootstrap}; logs in {workdir}")
        q = args.quick

        def echo(line: str) -> None:
            print(line, flush=True)

        # What the two scenarios on a live site (poller, consumer, sim) run with alike.
        live: _LiveSite = {
            "size": SiteSize(60, 60, 120) if q else SiteSize(),
            "interval": 2.0,
            "echo": echo,
        }

        runs: dict[str, Callable[[Path], Outcome]] = {
            "kill": lambda d: _with_postgres(
                lambda url: consumer_kills(
                    bootstrap,
                    url,
                    d,
                    updates=10_000 if q else 100_000,
                    keys=1_000 if q else 10_000,
                    kills=4 if q else 20,
                    echo=echo,
                )
            ),
            "broker": lambda d: broker_restarts(
                d,
                rounds=2 if q else 5,
                outage=args.outage or (3.0 if q else 5.0),
                churn=60 if q else 200,
                resync_interval=args.resync_interval or 600.0,
                **live,
            ),
            "faults": lambda d: site_faults(
                bootstrap,
                d,
                duration=40.0 if q else 300.0,
                spike_every=10.0 if q else 30.0,
                token_every=15.0 if q else 60.0,
                resync_interval=args.resync_interval or 60.0,
                **live,
            ),
            "fuzz-records": lambda d: fuzz_records(
                bootstrap,
                f"sqlite:///{d / 'fuzz.sqlite'}",
                d,
                count=10_000 if q else 100_000,
                echo=echo,
            ),
            "fuzz-settings": lambda d: fuzz_settings(
                examples=300 if q else 2000, processes=5 if q else 20, echo=echo
            ),
            "hostile": lambda d: both(
                "hostile input",
                hostile_records(
                    bootstrap,
                    f"sqlite:///{d / 'hostile.sqlite'}",
                    d,
                    count=5_000 if q else 100_000,
                    echo=echo,
                ),
                hostile_objects(
                    bootstrap,
                    d,
                    hostile=1_500 if q else 10_000,
                    good=100 if q else 1_000,
                    churn=50 if q else 300,
                    echo=echo,
                ),
            ),
        }
        outcomes: list[Outcome] = []
        for name in chosen:
            print(f"\n== {name} ==", flush=True)
            directory = workdir / name
            directory.mkdir()
            started = time.monotonic()
            outcome = runs[name](directory)
            outcome.figures["scenario wall time (s)"] = time.monotonic() - started
            outcomes.append(outcome)
            for line in outcome.lines():
                print(line, flush=True)
            saved = save(outcomes, q, vars(args))

        print(f"\nfigures saved to {saved}")
        with_rounds = next((o for o in outcomes if o.rounds), None)
        if with_rounds is not None:
            plot_rounds(with_rounds, OUT / "chaos-broker.png")
        failed = [o.scenario for o in outcomes if not o.ok]
        print("FAILED: " + ", ".join(failed) if failed else "every check held")
        raise SystemExit(1 if failed else 0)


class _LiveSite(TypedDict):
    size: SiteSize
    interval: float
    echo: Callable[[str], None]


def save(outcomes: list[Outcome], quick: bool, options: dict[str, object]) -> Path:
    """Write the figures so far (after every scenario, so a partial run keeps them)."""
    OUT.mkdir(exist_ok=True)
    saved = OUT / ("chaos-quick.json" if quick else "chaos.json")
    saved.write_text(
        json.dumps(
            {
                "machine": {
                    "node": platform.node(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg(),
                },
                "quick": quick,
                "options": options,
                "outcomes": [
                    {
                        "scenario": o.scenario,
                        "ok": o.ok,
                        "figures": o.figures,
                        "rounds": o.rounds,
                        "problems": o.problems,
                    }
                    for o in outcomes
                ],
            },
            indent=2,
        )
    )
    return saved


def both(name: str, *parts: Outcome) -> Outcome:
    """One outcome of several: their figures and problems, each named by its part."""
    out = Outcome(name)
    for part in parts:
        out.figures |= {f"{part.scenario}: {k}": v for k, v in part.figures.items()}
        out.problems += [f"{part.scenario}: {p}" for p in part.problems]
    return out


def _with_postgres(run: Callable[[str], Outcome]) -> Outcome:
    with LocalPostgres() as server:
        return run(server.url)


def plot_rounds(outcome: Outcome, path: Path) -> None:
    """Outage length and recovery time per broker round, against the 15 s limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = range(1, len(outcome.rounds) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(
        [r - 0.2 for r in rounds],
        [float(r["outage s"]) for r in outcome.rounds],
        0.4,
        label="broker away (s)",
    )
    ax.bar(
        [r + 0.2 for r in rounds],
        [float(r["recovery s"]) for r in outcome.rounds],
        0.4,
        label="sink equal to truth after (s)",
    )
    ax.axhline(15, color="red", linestyle="--", linewidth=1, label="recovery limit (15 s)")
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.set_xticks(list(rounds))
    ax.legend(fontsize=8)
    ax.set_title(outcome.scenario)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot saved to {path}")


if __name__ == "__main__":
    main()
