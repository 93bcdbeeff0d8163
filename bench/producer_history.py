"""The producer path before and after a change: `bench/publish_path.py`'s pair (our
`Publisher.observe` against raw fastavro + `produce`, into librdkafka's mock cluster, as the
`producer:` line of `bench/ceilings.py`) run against checkouts of the commits given.

Each REF is checked out into a temporary `git worktree` (removed at the end, also on failure).
Every measurement is a child process of this interpreter with that checkout first on its path
(so it imports that commit's product), running one raw and then one ours round under the
collector settings of the product's processes, as `ceilings.py` does. The refs are alternated
round by round (before, after, before, after, ...) so that load drift falls on all of them
alike; the best round of each side counts. Each round prints the CPU per record of each side
too (the whole process, librdkafka's threads included), steadier under load than the wall.
The last lines, one per REF:
`producer: ours N records/s, raw M records/s (P%) at REF`.

    .venv/bin/python bench/producer_history.py REF [REF ...] [--records 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from publish_path import MOCK, MOCK_BOOTSTRAP, avro_dict, observations, producer_ours, producer_raw

import connector
from connector.ops.heap import collect_less

ROOT = Path(__file__).resolve().parents[1]
CPU = ("ours_cpu", "raw_cpu")


def child(checkout: Path, records: int) -> None:
    """One round of the pair with the product of `checkout`; prints the seconds of each side,
    wall ("ours", "raw") and CPU of the whole process, librdkafka's threads included ("ours_cpu",
    "raw_cpu": the producer's start and close too, steadier than the wall on a loaded machine)."""
    if Path(connector.__file__).resolve().parents[1] != checkout.resolve():
        raise SystemExit(f"imported the product from {connector.__file__}, not from {checkout}")
    obs = observations(records)
    dicts = [avro_dict("raw", i + 1, o) for i, o in enumerate(obs)]
    with collect_less():
        cpu = time.process_time()
        raw = producer_raw(MOCK_BOOTSTRAP, "history.raw", dicts, MOCK)
        raw_cpu = time.process_time() - cpu
        cpu = time.process_time()
        ours = producer_ours(MOCK_BOOTSTRAP, "history.ours", "ours", obs, MOCK)
        ours_cpu = time.process_time() - cpu
    print(json.dumps({"ours": ours, "raw": raw, "ours_cpu": ours_cpu, "raw_cpu": raw_cpu}))


def measure(checkout: Path, records: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(checkout), "--records", str(records)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"the round at {checkout} failed (status {out.returncode}):\n{out.stderr}")
    figures: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="*", help="commits to measure, in this order each round")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child is not None:
        child(a.child, a.records)
        return
    if not a.refs:
        parser.error("name at least one commit")
    from common import load, machine  # not in the children: it imports today's product

    print(machine())
    print(f"settings: {a.records:,} records into librdkafka's mock cluster, best of {a.rounds}")
    with tempfile.TemporaryDirectory(prefix="cascade-producer-history-") as tmp:
        checkouts: dict[str, Path] = {}
        runs: dict[str, list[dict[str, float]]] = {ref: [] for ref in a.refs}
        try:
            for ref in a.refs:
                checkouts[ref] = Path(tmp) / f"checkout-{len(checkouts)}"
                add = ["worktree", "add", "--detach", "--quiet", str(checkouts[ref]), ref]
                subprocess.run(["git", "-C", str(ROOT), *add], check=True)
            for n in range(a.rounds):
                for ref, checkout in checkouts.items():
                    figures = measure(checkout, a.records)
                    runs[ref].append(figures)
                    print(
                        f"  round {n + 1} {ref}: ours {a.records / figures['ours']:,.0f}, raw "
                        f"{a.records / figures['raw']:,.0f} records/s; CPU per record ours "
                        f"{figures['ours_cpu'] / a.records * 1e6:.1f} us, raw "
                        f"{figures['raw_cpu'] / a.records * 1e6:.1f} us; {load()}"
                    )
        finally:
            for checkout in checkouts.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)],
                    check=False,
                )
    for ref, rounds in runs.items():
        cpu_ours, cpu_raw = (min(r[side] for r in rounds) / a.records * 1e6 for side in CPU)
        print(f"CPU per record at {ref}: ours {cpu_ours:.1f} us, raw {cpu_raw:.1f} us (best)")
    for ref, rounds in runs.items():
        ours = a.records / min(r["ours"] for r in rounds)
        raw = a.records / min(r["raw"] for r in rounds)
        print(
            f"producer: ours {ours:,.0f} records/s, raw {raw:,.0f} records/s "
            f"({ours / raw:.0%}) at {ref}"
        )


if __name__ == "__main__":
    main()
