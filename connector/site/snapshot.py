"""A fresh listing of a site's APIs: what each object shows there now (`audit --against-site`).

Every kind of the site's settings is listed in full, through the kinds table the poller uses,
so an object reads here exactly as the poller would publish it. Objects the poller cannot read
are left out, as the poller skips them; objects a listing shows as deleted are left out too.
"""

from __future__ import annotations

import logging
from typing import Any

import keystoneauth1.exceptions
import openstack
import openstack.exceptions

from connector.config import SiteSettings
from connector.errors import ConfigError, ConnectorError
from connector.records.model import record_key
from connector.site.kinds import Unreadable, kinds_for

log = logging.getLogger(__name__)


class SiteListingFailed(ConnectorError):
    """A kind of the site could not be listed; the message says which and why."""


def list_site(site: SiteSettings) -> dict[str, dict[str, Any]]:
    """Key -> status, name, project_id and details of every object the site's APIs list now."""
    if site.name is None:
        raise ConfigError("site.name: the site to list is not set")
    cloud = site.cloud or site.name
    try:
        conn = openstack.connect(cloud=cloud, api_timeout=site.api_timeout)
    except openstack.exceptions.ConfigException as exc:
        raise ConfigError(f"site.cloud: cannot use clouds.yaml entry {cloud!r}: {exc}") from exc
    listed: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds_for(site.kinds):
            proxy = getattr(conn, kind.service)
            try:
                for obs in kind.observations(proxy, skip=_skipped):
                    if not obs.deleted:
                        listed[record_key(site.name, kind.name, obs.id)] = {
                            "status": obs.status,
                            "name": obs.name,
                            "project_id": obs.project_id,
                            "details": dict(obs.details),
                        }
            except (
                openstack.exceptions.SDKException,
                keystoneauth1.exceptions.ClientException,
            ) as exc:
                what = f"cannot list {kind.name} of site {site.name}"
                raise SiteListingFailed(f"{what}: {exc}") from exc
    finally:
        conn.close()
    return listed


def _skipped(bad: Unreadable) -> None:
    log.warning("left out an object the poller cannot read either: %s", bad)
