"""Memory of the consumer's index of applied content (`window.Applied`) under create/delete
churn: N objects each created then deleted, as a site whose objects come and go does, then the
keys left in the index and the process's peak RSS. A deleted key leaves the index, so the figure
stays where N live keys would put it at most, not growing with every object a site ever had.
Usage: `python bench/applied_index.py [--pairs N]`.
"""

from __future__ import annotations

import argparse
import resource
from datetime import UTC, datetime

from common import machine

from connector.records.model import Deletion, StatusRecord
from connector.top.window import Applied, Pending, fingerprint

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    args = parser.parse_args()
    print(machine())
    applied = Applied()
    before = _rss_mib()
    for i in range(args.pairs):
        created = StatusRecord("site-a", "server", f"vm-{i:09d}", "ACTIVE", 2 * i, T0)
        deleted = Deletion("site-a", "server", f"vm-{i:09d}", 2 * i + 1)
        for change in (created, deleted):
            applied.remember([Pending(change, ("t", i % 6), i, None, fingerprint(change), 0.0)])
    print(f"create/delete pairs           {args.pairs:,}")
    print(f"keys left in the index        {len(applied):,}")
    print(f"peak RSS before / after       {before:.1f} MiB / {_rss_mib():.1f} MiB")


if __name__ == "__main__":
    main()
