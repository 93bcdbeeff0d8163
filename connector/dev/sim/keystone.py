"""Keystone v3 for a simulated site: version discovery, password tokens with a catalog, expiry.

The catalog points at paths on the sim's own port: `/compute/v2.1`, `/volume/v3/<project>`
(as `block-storage` and `volumev3`) and `/networking`. Tokens live `ttl` seconds; an expired or
unknown token gets keystonemiddleware's 401, after which keystoneauth authenticates again.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connector.dev.sim.api import ApiError, Request, Response, identity_fault, json_response
from connector.dev.sim.store import Site

#: The one user of a simulated site, an admin in every project.
USERNAME = "admin"
DOMAIN = {"id": "default", "name": "Default"}
REGION = "RegionOne"

_V3_UPDATED = "2024-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Token:
    token_id: str
    project_id: str | None
    issued_at: float
    expires_at: float


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Keystone:
    """Issues and checks tokens; serves the identity paths under `/identity` (and `/`)."""

    def __init__(self, site: Site, base_url: str, password: str, ttl: float) -> None:
        self.site = site
        self.base_url = base_url
        self.password = password
        self.ttl = ttl
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/identity"

    def _version(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": _V3_UPDATED,
            "links": [{"rel": "self", "href": f"{self.auth_url}/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def handle(self, request: Request, rest: str) -> Response:
        """`rest` is the path after `/identity` (the root serves discovery too)."""
        path = rest.rstrip("/")
        if request.method == "GET" and path == "":
            return json_response(300, {"versions": {"values": [self._version()]}})
        if request.method == "GET" and path == "/v3":
            return json_response(200, {"version": self._version()})
        if path == "/v3/auth/tokens":
            if request.method == "POST":
                return self._issue(request)
            if request.method == "GET":
                self.check(request)
                subject = self._lookup(request.headers.get("x-subject-token", ""))
                return json_response(
                    200, self._token_body(subject), {"X-Subject-Token": subject.token_id}
                )
        raise ApiError(404, identity_fault(404, "Could not find the requested resource."))

    def check(self, request: Request) -> Token:
        """The token of a service request, or keystonemiddleware's 401."""
        return self._lookup(request.headers.get("x-auth-token", ""))

    def _lookup(self, token_id: str) -> Token:
        with self._lock:
            token = self._tokens.get(token_id)
            if token is not None and token.expires_at <= self.site.now():
                del self._tokens[token_id]
                token = None
        if token is None:
            raise ApiError(
                401,
                identity_fault(401, "The request you have made requires authentication."),
                {"WWW-Authenticate": f'Keystone uri="{self.auth_url}"'},
            )
        return token

    def revoke_all(self) -> int:
        """Forget every token (as if each expired now); return how many there were."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
        return count

    def _issue(self, request: Request) -> Response:
        body = request.json()
        try:
            identity = body["auth"]["identity"]
            user = identity["password"]["user"]
            methods = identity["methods"]
        except (KeyError, TypeError) as exc:
            raise ApiError(
                400, identity_fault(400, f"Expecting to find {exc} in auth request.")
            ) from exc
        if "password" not in methods or not self._user_matches(user):
            raise ApiError(
                401, identity_fault(401, "The request you have made requires authentication.")
            )
        project_id = self._scope(body["auth"].get("scope"))
        now = self.site.now()
        token = Token(secrets.token_hex(16), project_id, now, now + self.ttl)
        with self._lock:
            # Drop expired tokens here, so a long-running sim does not accumulate them.
            self._tokens = {k: t for k, t in self._tokens.items() if t.expires_at > now}
            self._tokens[token.token_id] = token
        return json_response(201, self._token_body(token), {"X-Subject-Token": token.token_id})

    def _user_matches(self, user: Any) -> bool:
        if not isinstance(user, dict) or user.get("password") != self.password:
            return False
        if "id" in user:
            return bool(user["id"] == self.site.user_id)
        domain = user.get("domain") or {}
        return user.get("name") == USERNAME and (
            domain.get("id") == DOMAIN["id"] or domain.get("name") == DOMAIN["name"]
        )

    def _scope(self, scope: Any) -> str | None:
        if not scope:
            return None
        project = scope.get("project") if isinstance(scope, dict) else None
        if not isinstance(project, dict):
            raise ApiError(401, identity_fault(401, "Only project scope is supported."))
        for project_id, name in self.site.projects:
            if project.get("id") == project_id or project.get("name") == name:
                return project_id
        raise ApiError(401, identity_fault(401, f"Could not find project: {project}."))

    def _token_body(self, token: Token) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "methods": ["password"],
            "user": {
                "domain": DOMAIN,
                "id": self.site.user_id,
                "name": USERNAME,
                "password_expires_at": None,
            },
            "audit_ids": [token.token_id[:22]],
            "expires_at": _iso(token.expires_at),
            "issued_at": _iso(token.issued_at),
        }
        if token.project_id is not None:
            name = dict(self.site.projects)[token.project_id]
            doc["project"] = {"domain": DOMAIN, "id": token.project_id, "name": name}
            doc["is_domain"] = False
            doc["roles"] = [{"id": "51cc68287d524c759f47c811e6463340", "name": "admin"}]
            doc["catalog"] = self.catalog(token.project_id)
        return {"token": doc}

    def catalog(self, project_id: str) -> list[dict[str, Any]]:
        """The service catalog: every service on this sim's port, under its own path."""
        base = self.base_url
        services = [
            ("identity", "keystone", f"{base}/identity"),
            ("compute", "nova", f"{base}/compute/v2.1"),
            ("block-storage", "cinder", f"{base}/volume/v3/{project_id}"),
            ("volumev3", "cinderv3", f"{base}/volume/v3/{project_id}"),
            ("network", "neutron", f"{base}/networking"),
        ]
        return [
            {
                "type": kind,
                "name": name,
                "id": f"{n:032x}",
                "endpoints": [
                    {
                        "id": f"{n * 3 + i:032x}",
                        "interface": interface,
                        "region": REGION,
                        "region_id": REGION,
                        "url": url,
                    }
                    for i, interface in enumerate(("public", "internal", "admin"))
                ],
            }
            for n, (kind, name, url) in enumerate(services, start=1)
        ]
