"""A restart storm at scale, end to end, with a plot of what each layer saw over time.

Runs the demo's machinery (real local Kafka, simulated sites, pollers and the top consumer as
`cascade-connector` processes) with large sites, storms the first one, and prints the demo's
accounting table. Saves bench/out/storm.png: per-second status changes at the sites, records
published by the pollers and rows written to the top layer, across the initial sync and the storm.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/storm.py [--servers 30000 --volumes 30000 --ports 40000] [--sites 1]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from connector.dev.demo.run import Demo, DemoOptions, Snapshot

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1)
    parser.add_argument("--servers", type=int, default=30_000)
    parser.add_argument("--volumes", type=int, default=30_000)
    parser.add_argument("--ports", type=int, default=40_000)
    parser.add_argument("--storm-flaps", type=int, default=3)
    parser.add_argument("--storm-seconds", type=float, default=20.0)
    parser.add_argument("--max-rate", type=float, default=10_000.0)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    options = DemoOptions(
        sites=args.sites,
        servers=args.servers,
        volumes=args.volumes,
        ports=args.ports,
        storm_flaps=args.storm_flaps,
        storm_seconds=args.storm_seconds,
        max_rate=args.max_rate,
        interval=args.interval,
        converge_timeout=900,
    )
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"settings: {options}")
    demo = Demo(options, echo=print)
    converged = demo.run()
    OUT.mkdir(exist_ok=True)
    path = OUT / "storm.png"
    plot(demo.timeline, options, path)
    print(f"plot saved to {path}")
    raise SystemExit(0 if converged else 1)


def plot(timeline: list[tuple[str, Snapshot]], options: DemoOptions, path: Path) -> None:
    """Rates of the three layers over windows of at least a second (snapshots come from several
    processes and every few hundred ms, so shorter windows would show scrape jitter)."""
    t0 = timeline[0][1].at
    times, changes, published, rows = [], [], [], []
    storm_start = next((s.at - t0 for phase, s in timeline if phase == "storm"), None)
    a = timeline[0][1]
    for _phase, b in timeline[1:]:
        dt = b.at - a.at
        if dt < 1.0:
            continue
        times.append(b.at - t0)
        changes.append(max(0, (b.site - a.site).status_changes) / dt)
        published.append((b.published - a.published) / dt)
        rows.append((b.rows - a.rows) / dt)
        a = b
    fig, ax = plt.subplots(figsize=(10, 5))
    for series, label in (
        (changes, "status changes at the sites /s"),
        (published, "records published by the pollers /s"),
        (rows, "rows written to the top layer /s"),
    ):
        ax.plot(times, series, drawstyle="steps-pre", label=label)
    ax.axhline(options.max_rate, color="grey", linestyle=":", label="top layer's rate limit")
    if storm_start is not None:
        ax.axvspan(
            storm_start,
            storm_start + options.storm_seconds,
            color="orange",
            alpha=0.15,
            label="restart storm",
        )
    objects = options.servers + options.volumes + options.ports
    ax.set_title(
        f"{options.sites} site(s) x {objects:,} objects, storm of {options.storm_flaps} "
        f"flaps, poll every {options.interval:g} s"
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second (averaged over >= 1 s)")
    ax.set_yscale("symlog", linthresh=100)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
