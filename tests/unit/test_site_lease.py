"""The names a site's election uses, and the settings that tune it (no network)."""

from __future__ import annotations

import os
import re
import socket

import pytest

from connector.config import load_settings
from connector.errors import ConfigError
from connector.kafka.topics import lease_topic, site_topic, site_topic_pattern
from connector.site.election import instance_id


@pytest.mark.parametrize("prefix", ["cascade.status", "cascade", "c", "a-b.c_d"])
@pytest.mark.parametrize("site", ["east", "lease", "lease.east", "x-y.z"])
def test_the_lease_topic_is_never_a_site_topic_to_the_consumer(prefix: str, site: str) -> None:
    pattern = re.compile(site_topic_pattern(prefix))
    assert pattern.match(site_topic(prefix, site))
    assert not pattern.match(lease_topic(prefix, site))
    assert lease_topic(prefix, site) == f"{prefix}-lease.{site}"


def test_a_bad_site_name_is_refused_for_the_lease_as_for_the_topic() -> None:
    with pytest.raises(ConfigError, match="a/b"):
        lease_topic("cascade.status", "a/b")


def test_instance_id_defaults_to_host_and_pid() -> None:
    assert instance_id(load_settings().site) == f"{socket.gethostname()}:{os.getpid()}"
    named = load_settings(env={"CASCADE_SITE_INSTANCE_ID": "poller-2.east"})
    assert instance_id(named.site) == "poller-2.east"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("CASCADE_SITE_INSTANCE_ID", "two words", "site.instance_id"),
        ("CASCADE_SITE_INSTANCE_ID", "", "site.instance_id"),
        ("CASCADE_SITE_LEASE_TIMEOUT", "0.5", "site.lease_timeout"),
    ],
)
def test_bad_election_settings_name_the_field(variable: str, value: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(field)}.*{variable}"):
        load_settings(env={variable: value})
