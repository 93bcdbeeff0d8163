"""The site poller against the real broker and a simulated site over HTTP (openstacksdk unmodified):
one record per object, nothing for a restart, exactly the changes, tombstones, storms, cost."""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connector.dev.sim import RunningSim
from connector.records.codec import Codec
from connector.records.model import Deletion, StatusRecord
from connector.site.restore import Restored, restore_from_topic
from connector.site.runner import SitePoller, open_site_poller, run_site
from tests.support.kafka import Writer
from tests.support.sim import (
    Topic,
    assert_topic_matches_truth,
    control,
    differences,
    latest,
    objects,
    reset_stats,
    site_settings,
    truth,
)


def test_ten_thousand_objects_once_restart_changes_and_deletions(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    sim = open_sim(
        servers=3000, volumes=3000, ports=3500, networks=100, routers=25, floatingips=375
    )
    settings = site_settings(kafka_bootstrap, sim)
    before = truth(sim)
    assert len(before) == 10_000

    run_site(settings, once=True, registry=CollectorRegistry())
    topic = Topic(kafka_bootstrap, f"test.produce.{sim.cloud}")
    first = topic.new()
    per_key = Counter((c.kind, c.id) for c in objects(first))
    assert len(per_key) == 10_000 and set(per_key.values()) == {1}, "one record per object"
    assert_topic_matches_truth(first, before)
    heartbeat = [c for c in first if isinstance(c, StatusRecord) and c.is_heartbeat]
    assert [h.status for h in heartbeat] == ["ok"]
    assert heartbeat[0].details["server.objects"] == 3000

    # A restart: state comes back from the topic, the resync finds nothing new.
    run_site(settings, once=True, registry=CollectorRegistry())
    second = topic.new()
    earlier = latest(first)
    republished = [(earlier.get((c.kind, c.id)), c) for c in objects(second)]
    assert republished == [], "a restarted poller republishes nothing unchanged"
    assert len(second) == 1 and isinstance(second[0], StatusRecord) and second[0].is_heartbeat
    sequences = [c.sequence for c in first if c.sequence is not None]
    assert len(set(sequences)) == len(sequences), "every record has its own sequence"
    assert second[0].sequence is not None and second[0].sequence > max(sequences)

    made = control(sim, "/_sim/churn", {"changes": 100})
    after = truth(sim)
    changed = {k for k in after if before.get(k) != after[k]}
    deleted = set(before) - set(after)
    assert made["deleted"] > 0 and deleted

    run_site(settings, once=True, registry=CollectorRegistry())
    third = objects(topic.new())
    assert Counter((c.kind, c.id) for c in third).most_common(1)[0][1] == 1
    assert {(c.kind, c.id) for c in third if isinstance(c, StatusRecord)} == changed
    assert {(c.kind, c.id) for c in third if isinstance(c, Deletion)} == deleted
    assert all(isinstance(c, StatusRecord) or c.sequence for c in third), "tombstones sequenced"
    assert_topic_matches_truth(first + second + third, after)


def test_restore_ends_while_the_topic_keeps_growing(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    sim = open_sim(servers=20, volumes=20, ports=20)
    kinds = ["server", "volume", "port"]
    settings = site_settings(kafka_bootstrap, sim, kinds=",".join(kinds))
    run_site(settings, once=True, registry=CollectorRegistry())
    topic = f"test.produce.{sim.cloud}"
    codec = Codec()
    beat = StatusRecord(
        site=sim.cloud,
        kind="site",
        id=sim.cloud,
        status="ok",
        sequence=1,
        observed_at=datetime.now(UTC),
    )
    restored: list[Restored] = []
    # Heartbeats written far more often than librdkafka's fetch wait, as a running poller's
    # can be: the read still ends, at the end the topic had when it began.
    with Writer(kafka_bootstrap, topic, beat.key.encode(), codec.encode(beat)):
        reading = threading.Thread(
            target=lambda: restored.append(restore_from_topic(settings.kafka, topic, codec, kinds)),
            daemon=True,
        )
        reading.start()
        reading.join(60)
        assert not reading.is_alive(), "the restore did not end on a live topic"
    [state] = restored
    assert {kind: len(fps) for kind, fps in state.fingerprints.items()} == dict.fromkeys(kinds, 20)
    assert state.undecodable == 0 and state.messages > 61


def test_storm_between_two_polls_gives_at_most_one_record_per_object(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim]
) -> None:
    sim = open_sim(servers=200, volumes=200, ports=300, seed=7)
    site = open_site_poller(site_settings(kafka_bootstrap, sim))
    topic = Topic(kafka_bootstrap, site.topic)
    site.cycle(resync=True)
    site.flush()
    topic.new()
    started = control(sim, "/_sim/storm", {"flaps": 5, "seconds": 1.0})
    assert started["objects"] > 100
    deadline = time.monotonic() + 60
    while control(sim, "/_sim/stats")["background_jobs"]:
        assert time.monotonic() < deadline, "the storm did not end"
        time.sleep(0.05)
    # Watermarks are in whole seconds and moved back by the skew: the incremental polls see
    # the whole storm, and the fingerprints collapse it.
    modes = site.cycle(resync=False)
    assert modes == {
        "server": "incremental",
        "volume": "incremental",
        "port": "revisions",
        "network": "revisions",
        "router": "revisions",
        "floatingip": "revisions",
    }
    site.flush()
    storm = objects(topic.new())
    per_key = Counter((c.kind, c.id) for c in storm)
    assert not per_key or max(per_key.values()) == 1
    # Every flap ends where it began: nothing really changed, so nothing is published.
    assert len(storm) == 0
    assert_topic_matches_truth(topic.all(), truth(sim))


@pytest.mark.parametrize("neutron_changed_since", ["accept", "reject"])
def test_incremental_cycle_at_one_percent_churn_is_a_small_fraction_of_a_full_listing(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], neutron_changed_since: str
) -> None:
    sim = open_sim(
        servers=1000, volumes=1000, ports=1500, neutron_changed_since=neutron_changed_since
    )
    kinds = "server,volume,port"
    # No skew tolerance: the watermark is then the resync's start (floored to the second), so
    # the incremental cycle lists what the churn changed and nothing the resync already saw.
    site = open_site_poller(site_settings(kafka_bootstrap, sim, kinds=kinds, clock_skew=0))
    site.cycle(resync=True)
    # One incremental cycle first: it pays once for what a running poller pays once (Cinder's
    # version discovery, Neutron's answer to changed_since).
    sent = record_requests(site)
    site.cycle(resync=False)
    ports_asked = [(path, q) for kind, path, q, _ in sent if kind == "port"]
    rejected = neutron_changed_since == "reject"
    assert ports_asked[0][0].endswith(" 400" if rejected else " 200")
    assert "changed_since" in ports_asked[0][1]
    control(sim, "/_sim/churn", {"changes": 35})
    reset_stats(sim)
    sent.clear()
    site.cycle(resync=False)
    incremental = control(sim, "/_sim/stats")
    assert_incremental_filters_sent(sent, neutron_changed_since)
    reset_stats(sim)
    site.cycle(resync=True)
    full = control(sim, "/_sim/stats")
    site.flush()
    # At most one request more than a full listing (the volumes listed by created_at too); the
    # bytes are what an incremental cycle saves.
    assert sum(incremental["requests"].values()) <= sum(full["requests"].values()) + 1
    ratio = incremental["bytes_sent"] / full["bytes_sent"]
    assert ratio < 0.25, f"incremental cycle {incremental} vs full {full}"
    assert_topic_matches_truth(Topic(kafka_bootstrap, site.topic).all(), truth(sim, kinds))


def record_requests(site: SitePoller) -> list[tuple[str, str, dict[str, list[str]], str | None]]:
    """From now on, every request the site's pollers send, as (kind, path, query, the
    OpenStack-API-Version header) with the response's status appended to the path."""
    sent: list[tuple[str, str, dict[str, list[str]], str | None]] = []
    for poller in site.pollers:

        def hook(response: Any, *_args: Any, kind: str = poller.kind.name, **_kw: Any) -> None:
            url = urllib.parse.urlsplit(response.request.url)
            if "/identity" not in url.path:
                version = response.request.headers.get("OpenStack-API-Version")
                path = f"{url.path} {response.status_code}"
                sent.append((kind, path, urllib.parse.parse_qs(url.query), version))

        # The kind's own connection; the same session the poller's proxy sends through.
        poller.proxy.session.session.hooks["response"].append(hook)
    return sent


def assert_incremental_filters_sent(
    sent: list[tuple[str, str, dict[str, list[str]], str | None]], neutron_changed_since: str
) -> None:
    """The incremental filters on the wire: Nova changes-since; Cinder updated_at=gte: and
    created_at=gte: with microversion 3.60, then the volume summary (3.12) and, when its count
    differs, the plain id listing; Neutron changed_since (every second cycle an id listing), or
    (rejected) the id and revision projection and the changed ids."""
    by_kind: dict[str, list[tuple[str, dict[str, list[str]], str | None]]] = {}
    for kind, path, query, version in sent:
        by_kind.setdefault(kind, []).append((path, query, version))
    [(path, query, _)] = by_kind["server"]
    assert path.endswith("/servers/detail 200")
    assert set(query) == {"all_tenants", "changes-since"}
    # Listed by updated_at and again by created_at: Cinder leaves updated_at null on create.
    [(path, query, version), (created, by_created, _), summary, *swept] = by_kind["volume"]
    assert path.endswith("/volumes/detail 200") and version == "volume 3.60"
    assert set(query) == {"all_tenants", "updated_at"} and query["updated_at"][0].startswith("gte:")
    assert created.endswith("/volumes/detail 200") and set(by_created) == {
        "all_tenants",
        "created_at",
    }
    assert summary[0].endswith("/volumes/summary 200") and summary[2] == "volume 3.12"
    assert summary[1] == {"all_tenants": ["True"]}
    assert all(p.endswith("/volumes 200") and q == {"all_tenants": ["True"]} for p, q, _ in swept)
    ports = by_kind["port"]
    if neutron_changed_since == "accept":
        [(path, query, _), *swept] = ports
        assert path.endswith("/ports 200")
        assert set(query) == {"fields", "changed_since", "limit"}
        assert "revision_number" in query["fields"]
        # The second incremental cycle: the id listing that finds deletions, page by page.
        assert swept and all(
            p.endswith("/ports 200") and q["fields"] == ["id"] for p, q, _ in swept
        )
    else:
        # changed_since was rejected (400) in the first cycle, and is not asked again.
        assert all("changed_since" not in query for _, query, _ in ports)
        assert ports[0][0].endswith("/ports 200")
        assert ports[0][1] == {"fields": ["id", "revision_number"], "limit": ["10000"]}
        # The id and revision listing, page by page (limit, then marker), then the changed ids.
        by_id = [q for _, q, _ in ports if "id" in q]
        pages = [q for _, q, _ in ports if "id" not in q]
        assert all(q["fields"] == ["id", "revision_number"] for q in pages)
        assert all(set(q) == {"fields", "limit", "marker"} for q in pages[1:])
        assert by_id and all(set(q) == {"fields", "id", "limit"} for q in by_id)
        assert all(len(q["id"]) <= 100 for q in by_id)


def test_cli_once_then_run_until_sigterm(
    kafka_bootstrap: str, open_sim: Callable[..., RunningSim], tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    sim = open_sim(servers=20, volumes=20, ports=20)
    command = [
        sys.executable,
        "-m",
        "connector",
        "produce",
        "--bootstrap",
        kafka_bootstrap,
        "-X",
        "client.id=cli-test",
        "--site",
        sim.cloud,
        "--kinds",
        "servers,volumes,ports",
        "--interval",
        "0.2",
        "--resync-interval",
        "1",
    ]
    env = {**os.environ, "CASCADE_KAFKA_TOPIC_PREFIX": "test.produce"}
    done = subprocess.run([*command, "--once"], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    topic = Topic(kafka_bootstrap, f"test.produce.{sim.cloud}")
    assert len(objects(topic.new())) == 60

    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        control(sim, "/_sim/churn", {"changes": 5})
        expected = truth(sim, "server,volume,port")
        deadline = time.monotonic() + 60
        while differences(topic.all(settle=False), expected):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the running poller did not publish the churn"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
