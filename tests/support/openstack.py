"""A real Keystone and cinder-api for integration tests (connector.dev.local_openstack): the
admin's connection, projects and users made for a test, clouds.yaml entries that reach them,
volumes created and changed through Cinder's API, and what Cinder lists."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import yaml

from connector.dev.local_openstack import PASSWORD, REGION, LocalOpenStack
from tests.support.churn import Rows

#: The microversion of the requests tests make (the poller negotiates its own).
MICROVERSION = "3.60"


@dataclass(frozen=True)
class Account:
    """A user with a role in a project of its own, and its password."""

    project_id: str
    project_name: str
    user_id: str
    user_name: str
    password: str

    def auth(self, auth_url: str) -> dict[str, str]:
        return {
            "auth_url": auth_url,
            "username": self.user_name,
            "password": self.password,
            "project_name": self.project_name,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        }


class RealCloud:
    """The running services, seen by their admin."""

    def __init__(self, services: LocalOpenStack) -> None:
        self.services = services
        self.auth_url = services.endpoints.auth_url
        self.admin_auth = {
            "auth_url": self.auth_url,
            "username": "admin",
            "password": PASSWORD,
            "project_name": "admin",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        }
        self.admin = self.connect(self.admin_auth)
        # Cinder's default quota is 10 volumes a project.
        self.cinder(
            "put",
            "/os-quota-class-sets/default",
            json={"quota_class_set": {"volumes": -1, "gigabytes": -1}},
        )

    def connect(self, auth: dict[str, str]) -> Any:
        return openstack.connect(auth=auth, region_name=REGION)

    def cinder(self, method: str, path: str, conn: Any = None, **kwargs: Any) -> Any:
        """One request to cinder-api (as the admin unless `conn`); the parsed answer."""
        proxy = (conn or self.admin).block_storage
        response = getattr(proxy, method)(path, microversion=MICROVERSION, **kwargs)
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    def account(self, role: str = "admin") -> Account:
        """A new project and a user with `role` in it."""
        suffix = uuid.uuid4().hex[:8]
        identity: Any = self.admin.identity
        project = identity.create_project(name=f"p-{suffix}", domain_id="default")
        password = uuid.uuid4().hex
        user = identity.create_user(name=f"u-{suffix}", password=password, domain_id="default")
        identity.assign_project_role_to_user(project, user, identity.find_role(role))
        return Account(project.id, project.name, user.id, user.name, password)

    def revoke_tokens(self, account: Account) -> None:
        """Revoke every token of `account`'s user through Keystone's API: disabling a user
        records a revocation event for its tokens; enabled again at once, it may authenticate
        anew (tokens issued before stay revoked)."""
        identity: Any = self.admin.identity
        for enabled in (False, True):
            identity.update_user(account.user_id, enabled=enabled)

    def application_credential(self, account: Account) -> dict[str, str]:
        """The `auth` of a clouds.yaml entry with `auth_type: v3applicationcredential`: an
        application credential `account`'s user makes for itself (it carries the user's role
        in its project)."""
        conn = self.connect(account.auth(self.auth_url))
        try:
            made = conn.identity.create_application_credential(
                user=account.user_id, name=f"poller-{uuid.uuid4().hex[:8]}"
            )
        finally:
            conn.close()
        return {
            "auth_url": self.auth_url,
            "application_credential_id": made.id,
            "application_credential_secret": made.secret,
        }

    def write_cloud(self, path: Path, name: str, auth: dict[str, str], **entry: Any) -> None:
        """Add `clouds.<name>` to the clouds.yaml at `path` (region RegionOne unless given)."""
        doc = yaml.safe_load(path.read_text()) if path.exists() else None
        clouds = (doc or {}).get("clouds", {})
        auth_type = entry.pop("auth_type", None)
        clouds[name] = {
            "region_name": REGION,
            **entry,
            "auth": auth,
            **({"auth_type": auth_type} if auth_type else {}),
        }
        path.write_text(yaml.safe_dump({"clouds": clouds}))

    def create_volumes(self, conn: Any, count: int, prefix: str) -> list[str]:
        """`count` volumes in the project of `conn`; their ids. They stay `creating`."""
        return [
            self.cinder(
                "post", "/volumes", conn, json={"volume": {"size": 1, "name": f"{prefix}-{i}"}}
            )["volume"]["id"]
            for i in range(count)
        ]

    def volumes_elsewhere(self, count: int, prefix: str) -> list[str]:
        """`count` volumes in a new project of their own (never the admin's project, which the
        conformance test needs empty); their ids."""
        conn = self.connect(self.account(role="member").auth(self.auth_url))
        try:
            return self.create_volumes(conn, count, prefix)
        finally:
            conn.close()

    def action(self, volume_id: str, action: dict[str, Any]) -> None:
        self.cinder("post", f"/volumes/{volume_id}/action", json=action)

    def reset_status(self, volume_id: str, status: str) -> None:
        self.action(volume_id, {"os-reset_status": {"status": status}})

    def update(self, volume_id: str, **fields: Any) -> None:
        self.cinder("put", f"/volumes/{volume_id}", json={"volume": fields})

    def delete(self, volume_id: str, force: bool = False) -> None:
        if force:
            self.action(volume_id, {"os-force_delete": {}})
        else:
            self.cinder("delete", f"/volumes/{volume_id}")

    def listed(self) -> Rows:
        """What Cinder lists (every project): ("volume", id) -> (status, name, project id)."""
        out: Rows = {}
        path: str | None = "/volumes/detail?all_tenants=True&limit=1000"
        while path is not None:
            doc = self.cinder("get", path)
            for v in doc["volumes"]:
                out["volume", v["id"]] = (v["status"], v["name"], v["os-vol-tenant-attr:tenant_id"])
            links = [link["href"] for link in doc.get("volumes_links", ()) if link["rel"] == "next"]
            path = links[0] if links else None
        return out


class RealNetwork:
    """neutron-server beside a RealCloud's Keystone, seen by its admin: a network of the
    admin's, and ports on it made, changed and deleted through Neutron's API."""

    def __init__(self, cloud: RealCloud) -> None:
        self.cloud = cloud
        self.url = cloud.services.endpoints.neutron_url
        #: a connection of its own: the cloud's admin read the catalog before `network` was in it
        self.admin = cloud.connect(cloud.admin_auth)
        self.network_id: str = self.neutron(
            "post", "/networks", json={"network": {"name": "cascade-test", "shared": True}}
        )["network"]["id"]

    def neutron(self, method: str, path: str, conn: Any = None, **kwargs: Any) -> Any:
        """One request to neutron-server under /v2.0 (as the admin unless `conn`); the parsed
        answer."""
        proxy = (conn or self.admin).network
        response = getattr(proxy, method)(path, **kwargs)
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    def create_ports(self, count: int, prefix: str, conn: Any = None) -> list[str]:
        """`count` ports on the admin's network (made by `conn`'s project if given: the
        network is shared for that); their ids. They stay `DOWN` (no agent binds them)."""
        return [
            self.neutron(
                "post",
                "/ports",
                conn,
                json={"port": {"network_id": self.network_id, "name": f"{prefix}-{i}"}},
            )["port"]["id"]
            for i in range(count)
        ]

    def update(self, port_id: str, **fields: Any) -> None:
        self.neutron("put", f"/ports/{port_id}", json={"port": fields})

    def delete(self, port_id: str) -> None:
        self.neutron("delete", f"/ports/{port_id}")

    def listed(self) -> Rows:
        """What Neutron lists (every project): ("port", id) -> (status, name, project id)."""
        fields = "&".join(f"fields={name}" for name in ("id", "status", "name", "project_id"))
        ports = self.neutron("get", f"/ports?{fields}")["ports"]
        return {("port", p["id"]): (p["status"], p["name"], p["project_id"]) for p in ports}
