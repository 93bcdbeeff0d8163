"""The hostile-input suite (issue 26) alone: `bench/chaos.py --scenario hostile`.

At least 100,000 hostile messages written into site topics and read by a real `consume` into
SQLite, and 10,000 hostile API objects served by the simulated site to a real `produce` (and a
standby taking over); checks no process exits, no good record is lost, the other site's rows are
untouched and every hostile input is a dead letter or a skip, and prints the counts
(connector/dev/chaos/fuzz.py `hostile_records`, connector/dev/chaos/live.py `hostile_objects`).

    .venv/bin/python bench/hostile.py [--quick] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import sys

import chaos

if __name__ == "__main__":
    sys.argv[1:1] = ["--scenario", "hostile"]
    chaos.main()
