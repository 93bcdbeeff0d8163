"""Scale of one simulated site: build time, memory and page latency at 100,000 objects.

Runs a site in this process, measures resident memory (psutil), then over HTTP with a
keep-alive session: pages of 1,000 servers (detail, microversion 2.100, all_tenants), volumes
and projected ports, a changes-since query after churn, and the rates of churn and of a storm.
Prints one line per figure. Usage: `python bench/sim_scale.py [--objects 100000]`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from datetime import UTC, datetime

import psutil
import requests

from connector.dev.sim import start_sim


def _token(session: requests.Session, auth_url: str) -> str:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "admin", "domain": {"name": "Default"}, "password": "password"}
                },
            },
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}},
        }
    }
    answer = session.post(f"{auth_url}/v3/auth/tokens", json=body, timeout=30)
    answer.raise_for_status()
    return answer.headers["X-Subject-Token"]


def _pages(session: requests.Session, url: str, headers: dict[str, str], n: int) -> list[float]:
    """Latency (ms) of `n` consecutive pages, following the next links."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        answer = session.get(url, headers=headers, timeout=30)
        answer.raise_for_status()
        # Until the last byte arrives; parsing is the client's cost, not the site's.
        times.append((time.perf_counter() - started) * 1000)
        doc = answer.json()
        links: list[dict[str, str]] = next((v for k, v in doc.items() if k.endswith("_links")), [])
        url = links[0]["href"] if links else url
    return times


def _report(label: str, times: list[float]) -> None:
    print(
        f"{label:<44} median {statistics.median(times):6.1f} ms   "
        f"max {max(times):6.1f} ms   ({len(times)} pages)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000, help="servers+volumes+ports")
    args = parser.parse_args()
    third = args.objects // 3
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss
    started = time.perf_counter()
    sim = start_sim("bench", servers=third, volumes=third, ports=args.objects - 2 * third, seed=1)
    built = time.perf_counter() - started
    gc.collect()
    gc.freeze()  # as run_sim (the CLI) does
    rss = process.memory_info().rss
    counts = sim.site.counts()
    print(f"objects {sum(counts.values()):,} {counts}")
    print(f"build                                        {built:6.1f} s")
    print(
        f"RSS after build                              {rss / 2**20:6.0f} MB "
        f"(site: {(rss - rss_before) / 2**20:.0f} MB)"
    )
    try:
        session = requests.Session()
        token = _token(session, sim.auth_url)
        nova = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.100"}
        cinder = {"X-Auth-Token": token, "OpenStack-API-Version": "volume 3.71"}
        project = sim.site.admin_project_id
        _report(
            "servers/detail, 1000 per page",
            _pages(
                session, f"{sim.url}/compute/v2.1/servers/detail?all_tenants=1&limit=1000", nova, 20
            ),
        )
        _report(
            "volumes/detail, 1000 per page",
            _pages(
                session,
                f"{sim.url}/volume/v3/{project}/volumes/detail?all_tenants=1&limit=1000",
                cinder,
                20,
            ),
        )
        _report(
            "ports?fields=id,status,revision_number, 1000",
            _pages(
                session,
                f"{sim.url}/networking/v2.0/ports?fields=id&fields=status"
                "&fields=revision_number&limit=1000",
                {"X-Auth-Token": token},
                20,
            ),
        )
        since = datetime.fromtimestamp(int(time.time()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        started = time.perf_counter()
        session.post(f"{sim.url}/_sim/churn", json={"changes": 20_000}, timeout=120)
        churn_s = time.perf_counter() - started
        print(
            f"churn: 20,000 changes                        {churn_s:6.2f} s "
            f"({20_000 / churn_s:,.0f} changes/s)"
        )
        _report(
            "servers/detail?changes-since (after churn)",
            _pages(
                session,
                f"{sim.url}/compute/v2.1/servers/detail?all_tenants=1&limit=1000"
                f"&changes-since={since}",
                nova,
                5,
            ),
        )
        session.delete(f"{sim.url}/_sim/stats", timeout=30)
        started = time.perf_counter()
        storm = session.post(
            f"{sim.url}/_sim/storm", json={"flaps": 1, "seconds": 0}, timeout=30
        ).json()
        while session.get(f"{sim.url}/_sim/stats", timeout=30).json()["background_jobs"]:
            time.sleep(0.1)
        storm_s = time.perf_counter() - started
        print(
            f"storm: {storm['objects']:,} objects, {storm['changes']:,} changes   "
            f"{storm_s:6.2f} s ({storm['changes'] / storm_s:,.0f} changes/s)"
        )
        gc.collect()
        print(
            f"RSS at the end                               "
            f"{process.memory_info().rss / 2**20:6.0f} MB"
        )
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
