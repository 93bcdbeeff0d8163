"""What the demo measures: the sites' counters, the processes' metrics, and the sink against the
sites' truth."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connector.dev.demo.processes import http_json, http_text
from connector.sinks.sql import create_engine

StatusMap = dict[tuple[str, str, str], str | None]


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def scrape_total(urls: Iterable[str], name: str, **labels: str) -> float:
    return sum(metric_total(http_text(url), name, **labels) for url in urls)


@dataclass
class SiteCounters:
    """The sim's own counters, summed over sites."""

    status_changes: int = 0
    requests: int = 0
    bytes_sent: int = 0

    @classmethod
    def read(cls, sim_urls: Iterable[str]) -> SiteCounters:
        out = cls()
        for url in sim_urls:
            stats = http_json(f"{url}/_sim/stats")
            out.status_changes += int(stats["status_changes"])
            out.requests += sum(int(n) for n in stats["requests"].values())
            out.bytes_sent += int(stats["bytes_sent"])
        return out

    def __sub__(self, other: SiteCounters) -> SiteCounters:
        return SiteCounters(
            self.status_changes - other.status_changes,
            self.requests - other.requests,
            self.bytes_sent - other.bytes_sent,
        )


@dataclass
class Comparison:
    """The sink against the truth: how many objects differ, and a few examples."""

    objects: int
    missing: int = 0
    extra: int = 0
    wrong_status: int = 0
    examples: list[str] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.wrong_status)

    @property
    def behind(self) -> str:
        """How many objects differ, by kind."""
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in self.by_kind.most_common())
        return f"{sum(self.by_kind.values()):,} behind ({kinds})"

    def __str__(self) -> str:
        if self.equal:
            return f"equal ({self.objects:,} objects)"
        return (
            f"{self.missing:,} missing, {self.extra:,} extra, {self.wrong_status:,} wrong status "
            f"of {self.objects:,}; e.g. {'; '.join(self.examples)}"
        )


def truth(sims: dict[str, str], kinds: Iterable[str]) -> StatusMap:
    """Every live object of `kinds` in every site, as the sites list them now."""
    query = "&".join(f"kind={k}" for k in kinds)
    out: StatusMap = {}
    for site, url in sims.items():
        for obj in http_json(f"{url}/_sim/truth?{query}", timeout=60)["objects"]:
            out[(site, obj["kind"], obj["id"])] = obj["status"]
    return out


_SITES: sa.BindParameter[list[str]] = sa.bindparam("sites", expanding=True)


class SinkReader:
    """Reads the live objects the top layer holds."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url)

    def statuses(self, sites: Collection[str] | None = None) -> StatusMap:
        """The live objects of `sites` (default: every site)."""
        query = sa.text(
            "SELECT site, kind, id, status FROM resource_status WHERE NOT deleted "
            "AND kind <> 'site'" + ("" if sites is None else " AND site IN :sites")
        )
        params = {}
        if sites is not None:
            query = query.bindparams(_SITES)
            params = {"sites": list(sites)}
        try:
            with self._engine.connect() as conn:
                return {(r[0], r[1], r[2]): r[3] for r in conn.execute(query, params)}
        except sa.exc.OperationalError:
            return {}  # the consumer has not created its tables yet

    def count(self, sites: Collection[str]) -> int:
        """How many live objects of `sites` the top holds: a cheap look before `statuses`,
        which at millions of rows costs the machine seconds of CPU."""
        query = sa.text(
            "SELECT count(*) FROM resource_status WHERE NOT deleted AND kind <> 'site' "
            "AND site IN :sites"
        ).bindparams(_SITES)
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(query, {"sites": list(sites)}).scalar_one())
        except sa.exc.OperationalError:
            return 0

    def close(self) -> None:
        self._engine.dispose()


def compare(expected: StatusMap, actual: StatusMap) -> Comparison:
    result = Comparison(len(expected))
    for key, status in expected.items():
        if key not in actual:
            result.missing += 1
            result.by_kind[key[1]] += 1
            if len(result.examples) < 3:
                result.examples.append(f"{'/'.join(key)} missing")
        elif actual[key] != status:
            result.wrong_status += 1
            result.by_kind[key[1]] += 1
            if len(result.examples) < 3:
                result.examples.append(f"{'/'.join(key)} is {actual[key]}, site says {status}")
    for key in actual.keys() - expected.keys():
        result.extra += 1
        result.by_kind[key[1]] += 1
        if len(result.examples) < 3:
            result.examples.append(f"{'/'.join(key)} no longer exists")
    return result


#: What a proxy-polling design lists every interval: (catalog type, path, collection key).
FULL_LISTINGS = (
    ("compute", "/servers/detail?all_tenants=1&limit=1000", "servers"),
    ("block-storage", "/volumes/detail?all_tenants=1&limit=1000", "volumes"),
    ("network", "/v2.0/ports?limit=1000", "ports"),
)


@dataclass(frozen=True)
class SiteSession:
    """A plain HTTP client of one site's APIs: a Keystone token, the catalog's public
    endpoints, and the User-Agent the site's counters file its requests under."""

    token: str
    endpoints: dict[str, str]
    user_agent: str

    def get(self, url: str, headers: dict[str, str] | None = None) -> Any:
        request = Request(
            url,
            headers={"X-Auth-Token": self.token, "User-Agent": self.user_agent, **(headers or {})},
        )
        with urlopen(request, timeout=60) as response:
            return json.loads(response.read())


def login(clouds_file: Path, cloud: str, user_agent: str = "cascade-demo/1") -> SiteSession:
    """A token and the endpoints for `cloud` of `clouds_file`, as a plain client gets them."""
    auth = yaml.safe_load(clouds_file.read_text())["clouds"][cloud]["auth"]
    request = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": auth["username"],
                        "password": auth["password"],
                        "domain": {"name": auth["user_domain_name"]},
                    }
                },
            },
            "scope": {
                "project": {
                    "name": auth["project_name"],
                    "domain": {"name": auth["project_domain_name"]},
                }
            },
        }
    }
    with urlopen(
        Request(
            f"{auth['auth_url']}/v3/auth/tokens",
            json.dumps(request).encode(),
            {"Content-Type": "application/json", "User-Agent": user_agent},
        ),
        timeout=30,
    ) as response:
        token = response.headers["X-Subject-Token"]
        catalog = json.loads(response.read())["token"]["catalog"]
    endpoints = {
        service["type"]: next(e["url"] for e in service["endpoints"] if e["interface"] == "public")
        for service in catalog
    }
    return SiteSession(token, endpoints, user_agent)


def next_link(page: dict[str, Any], key: str) -> str | None:
    """The `next` link of a paged OpenStack listing, if any."""
    return next(
        (link["href"] for link in page.get(f"{key}_links", []) if link.get("rel") == "next"),
        None,
    )


def full_listing_cost(sim_url: str, clouds_file: Path, cloud: str) -> SiteCounters:
    """What one full listing of servers, volumes and ports (details, all projects, pages of 1000)
    costs a site, measured on the site's own counters while a plain HTTP client does it."""
    before = SiteCounters.read([sim_url])
    session = login(clouds_file, cloud)
    for service, path, key in FULL_LISTINGS:
        url: str | None = session.endpoints[service] + path
        while url:
            url = next_link(session.get(url), key)
    return SiteCounters.read([sim_url]) - before
