"""What the site poller costs at scale: a full resync against an incremental cycle at 1% churn.

Starts a simulated site as its own process (`cascade-connector sim`, so that the sim and the
poller do not share a GIL), then drives a SitePoller (the code behind `cascade-connector
produce`) against it and the Kafka broker: a first resync that publishes every object, a warm-up
incremental cycle, 1% churn, a measured incremental cycle, and a measured resync. Requests and
bytes come from the sim's own counters (`/_sim/stats`), so they are what the site really served;
the poller's CPU time (all its threads) says how much of a cycle is the poller's own work.

It also measures what finding deletions costs where the incremental filter cannot show them:
an incremental cycle with nothing changed (Cinder's volume summary count is asked on every one),
and each kind's id sweep and count on their own.

Usage: `python bench/poll_cost.py [--quick] [--servers N --volumes N --ports N]
[--neutron-changed-since accept|reject] [--bootstrap HOST:PORT]`
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from connector.config import load_settings
from connector.ops.heap import collect_less
from connector.site.runner import open_site_poller

KINDS = "server,volume,port"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _control(url: str, path: str, body: dict[str, Any] | None = None, method: str = "") -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method=method or ("GET" if body is None else "POST")
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=300) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def _wait_for_sim(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the sim exited with {proc.returncode}")
        try:
            _control(url, "/_sim/info")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the sim did not answer") from None
            time.sleep(0.2)


def _measured(url: str, label: str, action: Any) -> dict[str, Any]:
    _control(url, "/_sim/stats", method="DELETE")
    started, cpu_started = time.perf_counter(), time.process_time()
    modes = action()
    seconds = time.perf_counter() - started
    # The poller's CPU, every thread of this process (the sim has a process of its own).
    cpu = time.process_time() - cpu_started
    stats = _control(url, "/_sim/stats")
    # Keystone and version documents are a connection's fixed cost, not the listing's.
    api = {k: v for k, v in stats["requests"].items() if "/identity" not in k}
    figures = {
        "label": label,
        "seconds": seconds,
        "cpu": cpu,
        "requests": sum(api.values()),
        "bytes": stats["bytes_sent"],
        "modes": modes,
        "endpoints": api,
    }
    print(
        f"{label:<30} {seconds:6.2f} s, poller CPU {cpu:6.2f} s  "
        f"{figures['requests']:4d} requests {figures['bytes'] / 1e6:7.2f} MB  modes {modes}"
    )
    return figures


def main() -> None:
    # As in `cascade-connector produce` (run_site).
    with collect_less():
        _main()


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=40_000)
    parser.add_argument("--volumes", type=int, default=30_000)
    parser.add_argument("--ports", type=int, default=30_000)
    parser.add_argument("--churn", type=float, default=0.01, help="fraction of objects changed")
    parser.add_argument("--neutron-changed-since", choices=["accept", "reject"], default="reject")
    parser.add_argument("--bootstrap", default=os.environ.get("CASCADE_KAFKA_BOOTSTRAP"))
    parser.add_argument("--quick", action="store_true", help="a tenth of the default site")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.volumes, args.ports = 4_000, 3_000, 3_000

    site = f"bench-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    clouds = Path(tempfile.mkdtemp()) / "clouds.yaml"
    objects = args.servers + args.volumes + args.ports
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector",
            "sim",
            "--site",
            site,
            "--listen",
            f"127.0.0.1:{port}",
            "--servers",
            str(args.servers),
            "--volumes",
            str(args.volumes),
            "--ports",
            str(args.ports),
            "--neutron-changed-since",
            args.neutron_changed_since,
            "--write-clouds-yaml",
            str(clouds),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_sim(url, sim)
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(clouds)
        kafka = {"topic_prefix": "bench.poll"}
        if args.bootstrap:
            kafka["bootstrap"] = args.bootstrap
        # No skew tolerance: the incremental cycle then lists exactly what changed since the
        # last poll, which is the steady-state figure (the tolerance adds a few seconds' worth).
        settings = load_settings(
            flags={"kafka": kafka, "site": {"name": site, "kinds": KINDS, "clock_skew": 0}}
        )
        print(
            f"site: {objects} objects ({args.servers} servers, {args.volumes} volumes, "
            f"{args.ports} ports); Neutron changed_since: {args.neutron_changed_since}; "
            f"{os.cpu_count()} CPUs"
        )
        registry = CollectorRegistry()
        poller = open_site_poller(settings, registry)
        _measured(url, "first resync (publishes all)", lambda: poller.cycle(resync=True))
        poller.flush()
        poller.cycle(resync=False)
        idle = _measured(url, "incremental, nothing changed", lambda: poller.cycle(resync=False))
        for kind_poller in poller.pollers:
            kind, proxy = kind_poller.kind, kind_poller.proxy
            if kind.sweep is None:
                continue
            sweep = functools.partial(kind.listed_ids, proxy)
            _measured(url, f"id sweep of {kind.name}s", lambda sweep=sweep: len(sweep()))
            if kind.sweep.count is not None:
                _measured(url, f"count of {kind.name}s", functools.partial(kind.total, proxy))
        changes = int(objects * args.churn)
        made = _control(url, "/_sim/churn", {"changes": changes})
        print(f"churn: {changes} changes at the site: {made}")
        inc = _measured(url, "incremental cycle", lambda: poller.cycle(resync=False))
        full = _measured(url, "resync (full listing)", lambda: poller.cycle(resync=True))
        poller.flush()
        published = registry.get_sample_value
        total = sum(
            published("cascade_site_changes_published_total", {"site": site, "kind": k}) or 0
            for k in KINDS.split(",")
        )
        print(f"records published in all: {total:.0f} ({objects} objects + the churn)")
        print(
            f"incremental / full: requests {inc['requests']}/{full['requests']} = "
            f"{inc['requests'] / full['requests']:.1%}, bytes {inc['bytes'] / 1e3:.0f} kB / "
            f"{full['bytes'] / 1e6:.1f} MB = {inc['bytes'] / full['bytes']:.2%}, "
            f"time {inc['seconds']:.2f} s / {full['seconds']:.2f} s"
        )
        print(f"incremental endpoints: {inc['endpoints']}")
        print(
            f"nothing changed / full: requests {idle['requests']}/{full['requests']}, bytes "
            f"{idle['bytes'] / 1e3:.1f} kB; endpoints {idle['endpoints']}"
        )
    finally:
        sim.terminate()
        sim.wait(30)


if __name__ == "__main__":
    main()
