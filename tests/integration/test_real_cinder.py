"""The poller against a real Keystone 30.0.0 and a real cinder-api 29.0.0 (`real_cloud`, one
pair for the session): new volumes found by the incremental poll although Cinder leaves their
`updated_at` null; clouds.yaml entries that do not fit the catalog ending with exit 2; a user
without the admin role reported; churn in two projects reaching the top; a token revoked through
Keystone's API mid-run (a new one fetched within the refused request, a log line saying so,
nothing lost); Keystone stopped and started mid-run (polls fail, then catch up); an application
credential (`v3applicationcredential`); the region and interface chosen in clouds.yaml being the
endpoint polled (the catalog's second region has cinder-api at its internal interface alone).

Volumes are made in projects of their own, never the admin's (the conformance test, in the same
session, needs that one empty)."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openstack.exceptions
import pytest

from connector.config import load_settings
from connector.dev.local_openstack import OTHER_REGION
from connector.records.model import Deletion, StatusRecord
from connector.site.runner import SitePoller, open_site_poller
from tests.support import wait_for
from tests.support.churn import Churn, live_rows, top_equals
from tests.support.cli import run
from tests.support.openstack import RealCloud
from tests.support.sim import Topic

#: The poll interval of the churn test, seconds.
INTERVAL = 1.0


def poller(bootstrap: str, cloud: str, name: Callable[[str], str]) -> SitePoller:
    """A site poller of volumes for the clouds.yaml entry `cloud`, on a topic of its own."""
    return open_site_poller(
        load_settings(
            flags={
                "kafka": {"bootstrap": bootstrap, "topic_prefix": name("status")},
                "site": {"name": cloud, "kinds": "volume", "clock_skew": 1.0},
            }
        )
    )


def published(topic: Topic) -> dict[str, str | None]:
    """Volume id -> latest status on the topic (None: a tombstone)."""
    out: dict[str, str | None] = {}
    for change in topic.all():
        if isinstance(change, StatusRecord) and change.kind == "volume":
            out[change.id] = change.status
        elif isinstance(change, Deletion) and change.kind == "volume":
            out[change.id] = None
    return out


def test_a_volume_cinder_never_updated_is_published_by_the_next_incremental_poll(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
) -> None:
    account = real_cloud.account()
    real_cloud.write_cloud(clouds_yaml, "fresh", account.auth(real_cloud.auth_url))
    site = poller(kafka_bootstrap, "fresh", unique_name)
    topic = Topic(kafka_bootstrap, site.topic)
    site.cycle(resync=True)
    conn = real_cloud.connect(account.auth(real_cloud.auth_url))
    [new] = real_cloud.create_volumes(conn, 1, "fresh")
    shown = real_cloud.cinder("get", f"/volumes/{new}")["volume"]
    assert shown["updated_at"] is None, "Cinder stamps no update time on create"
    assert site.cycle(resync=False) == {"volume": "incremental"}
    site.flush()
    assert published(topic).get(new) == "creating", "the new volume waited for a resync"


def test_clouds_yaml_entries_that_do_not_fit_the_site_exit_2_naming_what_is_wrong(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
) -> None:
    auth = real_cloud.account().auth(real_cloud.auth_url)
    real_cloud.write_cloud(clouds_yaml, "elsewhere", auth, region_name="RegionNowhere")
    real_cloud.write_cloud(clouds_yaml, "typo", auth, interface="pubilc")
    real_cloud.write_cloud(clouds_yaml, "inside", auth, block_storage_interface="intranet")
    real_cloud.write_cloud(clouds_yaml, "plugin", auth, auth_type="v3nosuch")
    env = {
        "OS_CLIENT_CONFIG_FILE": str(clouds_yaml),
        "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CASCADE_KAFKA_TOPIC_PREFIX": unique_name("status"),
    }
    expected = {
        "elsewhere": "no block-storage endpoint in region 'RegionNowhere'",
        "typo": "interface 'pubilc' is not an interface",
        "inside": "block_storage_interface 'intranet' is not an interface",
        "plugin": "v3nosuch could not be found",
        "nowhere": "nowhere was not found",
    }

    def produce(cloud: str) -> subprocess.CompletedProcess[str]:
        return run("produce", "--site", cloud, "--kinds", "volume", "--once", env=env)

    # At once: the entries checked without the network end before Kafka is asked; the one that
    # needs the catalog ("elsewhere") spends most of its ~4 s waiting (on its site's lease, then
    # on closing its Kafka clients), not computing.
    with ThreadPoolExecutor(len(expected)) as pool:
        ran = dict(zip(expected, pool.map(produce, expected), strict=True))
    for cloud, why in expected.items():
        done = ran[cloud]
        assert done.returncode == 2, f"{cloud}: exit {done.returncode}: {done.stderr[-800:]}"
        assert f"clouds.yaml entry {cloud!r}" in done.stderr and why in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        if cloud == "elsewhere":
            assert "the catalog offers (region/interface): RegionOne/admin" in done.stderr


def test_a_poller_without_the_admin_role_says_it_sees_part_of_the_site(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = real_cloud.account()
    real_cloud.create_volumes(real_cloud.connect(other.auth(real_cloud.auth_url)), 2, "other")
    member = real_cloud.account(role="member")
    auth = member.auth(real_cloud.auth_url)
    real_cloud.create_volumes(real_cloud.connect(auth), 1, "own")
    real_cloud.write_cloud(clouds_yaml, "member", auth)
    site = poller(kafka_bootstrap, "member", unique_name)
    site.cycle(resync=True)
    healthy, details = site.health.snapshot()
    assert not healthy and details["volume.partial"] is True, details
    assert "lists only the projects of the poller's own credentials" in caplog.text
    site.heartbeat()
    site.flush()
    [beat] = [
        c
        for c in Topic(kafka_bootstrap, site.topic).all()
        if isinstance(c, StatusRecord) and c.is_heartbeat
    ]
    assert beat.status == "degraded" and beat.details["volume.partial"] is True


@pytest.fixture
def churn_db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "top.sqlite"


@pytest.mark.timeout(600)
def test_volume_churn_in_two_projects_reaches_the_top_after_every_phase(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
    churn_db: Path,
) -> None:
    poller_account = real_cloud.account()
    real_cloud.write_cloud(clouds_yaml, "churn", poller_account.auth(real_cloud.auth_url))
    projects = [real_cloud.account(role="member") for _ in range(2)]
    conns = [real_cloud.connect(p.auth(real_cloud.auth_url)) for p in projects]
    volumes = [
        v for i, conn in enumerate(conns) for v in real_cloud.create_volumes(conn, 100, f"p{i}")
    ]
    for volume in volumes[:100]:
        real_cloud.reset_status(volume, "available")
    figures: list[str] = []

    def converge(phase: str, changes: int, started: float, published_before: float) -> float:
        top_equals(real_cloud.listed, churn_db, phase)
        took = time.monotonic() - started
        figures.append(
            f"{phase:<26} {changes:>4} changes  {churn.published() - published_before:>5.0f} "
            f"records published  converged in {took:5.1f} s"
        )
        return took

    with Churn(kafka_bootstrap, "churn", unique_name, churn_db, interval=INTERVAL) as churn:
        converge("first sync", len(volumes), time.monotonic(), 0.0)

        def phase(name: str, changes: int, act: Callable[[], object]) -> float:
            before = churn.published()
            act()
            return converge(name, changes, time.monotonic(), before)

        def reset() -> None:
            statuses = ["error", "available", "maintenance"] * 20
            for volume, status in zip(volumes[50:110], statuses, strict=True):
                real_cloud.reset_status(volume, status)

        def rename() -> None:
            for volume in volumes[110:140]:
                real_cloud.update(volume, name=f"{volume[:8]}-renamed")

        def tag() -> None:
            for volume in volumes[140:170]:
                real_cloud.update(volume, metadata={"tier": "gold"})

        phase("status resets", 60, reset)
        phase("renames", 30, rename)
        # Cinder 29.0.0 keeps a volume's `updated_at` on a metadata change (checked here: no
        # incremental poll can see one) and the top holds no metadata (docs/site.md,
        # "Publishing only real changes"): two polls after the changes, nothing may have been
        # published and the top must still equal Cinder's listing.
        tagged = volumes[140:170]

        def updated() -> list[str]:
            shown = [real_cloud.cinder("get", f"/volumes/{v}")["volume"] for v in tagged]
            return [volume["updated_at"] for volume in shown]

        untagged, published = updated(), churn.published()
        phase("metadata changes", 30, tag)
        polls = churn.polls()
        wait_for(lambda: churn.polls() >= polls + 2, 30, "two polls after the metadata changes")
        shown = real_cloud.cinder("get", f"/volumes/{tagged[0]}")["volume"]
        assert shown["metadata"] == {"tier": "gold"}, shown
        assert updated() == untagged, "Cinder moved updated_at on a metadata change"
        assert churn.published() == published, "a metadata change was published"
        top_equals(real_cloud.listed, churn_db, "the metadata changes")

        def delete() -> None:
            for i, volume in enumerate(volumes[170:200]):
                real_cloud.reset_status(volume, "error" if i % 2 else "available")
                real_cloud.delete(volume, force=bool(i % 2))

        deletions = phase("deletions", 30, delete)
        phase(
            "creations",
            20,
            lambda: [real_cloud.create_volumes(conns[i % 2], 1, f"late{i}") for i in range(20)],
        )
    print("\nvolume churn against cinder-api 29.0.0, poll interval", INTERVAL, "s:")
    print("\n".join(figures))
    assert deletions < 2 * INTERVAL + 10, f"deletions took {deletions:.1f} s"


def test_a_token_revoked_mid_run_is_replaced_and_nothing_is_lost(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
    churn_db: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="connector.site.runner")
    account = real_cloud.account()
    real_cloud.write_cloud(clouds_yaml, "revoked", account.auth(real_cloud.auth_url))
    [changed] = real_cloud.volumes_elsewhere(1, "revoked")
    with Churn(kafka_bootstrap, "revoked", unique_name, churn_db) as churn:
        top_equals(real_cloud.listed, churn_db, "the first sync")
        real_cloud.revoke_tokens(account)
        real_cloud.reset_status(changed, "error")
        [created] = real_cloud.volumes_elsewhere(1, "after-revocation")
        wait_for(
            lambda: "the site refused the poller's token" in caplog.text,
            30,
            "the poller to meet its revoked token",
        )
        top_equals(real_cloud.listed, churn_db, "the revocation")
        assert churn.failed_polls() == 0, "a new token was not fetched within the request"
    assert live_rows(churn_db)["volume", created][0] == "creating"
    assert "clouds.yaml entry 'revoked'" in caplog.text


def test_a_keystone_restart_mid_run_delays_changes_and_loses_none(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
    churn_db: Path,
) -> None:
    real_cloud.write_cloud(clouds_yaml, "restart", real_cloud.account().auth(real_cloud.auth_url))
    before, after = real_cloud.volumes_elsewhere(2, "restart")
    with Churn(kafka_bootstrap, "restart", unique_name, churn_db) as churn:
        top_equals(real_cloud.listed, churn_db, "the first sync")
        real_cloud.reset_status(before, "error")
        real_cloud.services.stop_keystone()
        try:
            # cinder-api trusts a validated token for TOKEN_CACHE_SECONDS, then asks Keystone.
            wait_for(lambda: churn.failed_polls() > 0, 30, "a poll to fail without Keystone")
        finally:
            real_cloud.services.start_keystone()
        real_cloud.reset_status(after, "available")
        top_equals(real_cloud.listed, churn_db, "the Keystone restart")
    rows = live_rows(churn_db)
    assert (rows["volume", before][0], rows["volume", after][0]) == ("error", "available")


def test_an_application_credential_in_clouds_yaml_polls_every_project(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
) -> None:
    [theirs] = real_cloud.volumes_elsewhere(1, "theirs")
    credential = real_cloud.application_credential(real_cloud.account())
    real_cloud.write_cloud(clouds_yaml, "appcred", credential, auth_type="v3applicationcredential")
    site = poller(kafka_bootstrap, "appcred", unique_name)
    site.cycle(resync=True)
    site.flush()
    healthy, details = site.health.snapshot()
    assert healthy and details["volume.partial"] is False, details
    assert published(Topic(kafka_bootstrap, site.topic)).get(theirs) == "creating"


def test_the_region_and_interface_chosen_in_clouds_yaml_are_the_endpoint_polled(
    real_cloud: RealCloud,
    kafka_bootstrap: str,
    clouds_yaml: Path,
    unique_name: Callable[[str], str],
) -> None:
    account = real_cloud.account()
    auth = account.auth(real_cloud.auth_url)
    [volume] = real_cloud.volumes_elsewhere(1, "region")
    # In OTHER_REGION only the internal endpoint is cinder-api; the public one is Keystone.
    real_cloud.write_cloud(
        clouds_yaml, "internal", auth, region_name=OTHER_REGION, interface="internal"
    )
    real_cloud.write_cloud(clouds_yaml, "public", auth, region_name=OTHER_REGION)
    site = poller(kafka_bootstrap, "internal", unique_name)
    site.cycle(resync=True)
    site.flush()
    assert published(Topic(kafka_bootstrap, site.topic)).get(volume) == "creating"
    wrong = poller(kafka_bootstrap, "public", unique_name)
    with pytest.raises(openstack.exceptions.NotFoundException) as refused:
        wrong.cycle(resync=True)
    assert f"{real_cloud.auth_url}/{account.project_id}/volumes/detail" in str(refused.value)
