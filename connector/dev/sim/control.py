"""The sim's own control API under `/_sim/` (not OpenStack), plus request stats and faults.

- `GET /_sim/truth[?kind=K...]`: every live object now, consistent with what the API lists.
- `GET /_sim/stats`: API requests per endpoint, bytes sent (also per client), status changes;
  `DELETE` resets.
- `POST /_sim/changes`: `{"record": true}` starts keeping a log of every status change (false
  stops and drops it); `GET /_sim/changes?after=N&limit=M` reads it from position N
  (`{"next", "length", "changes": [[time, kind, id, status or null], ...]}`).
- `POST /_sim/churn`: `{"changes": N}` now, or `{"rate": R, "seconds": S}` in the background.
- `POST /_sim/storm`: `{"flaps": K, "seconds": T, "kinds": [...], "changed": F}`, a site
  restart; a fraction F of its objects ends in another status than it started in.
- `POST /_sim/faults`: `{"seconds": S, "status": 500, "delay": D, "paths": [prefixes],
  "ratio": R}` makes API requests fail (status) or hang (delay) for S seconds, a share R of them
  (default all); `{"seconds": S, "hide": {"kind": K, "share": F}}` leaves that share of the
  kind's objects out of every listing for S seconds (a Nova cell down); `DELETE` clears them,
  `DELETE /_sim/faults?path=P` only the request faults given path prefix P (a service back up
  while another stays down).
- `POST /_sim/corrupt`: `{"kind": K, "count": N}` serves N objects of kind K malformed (no id,
  a time that does not parse, a status that is not a string, in turn); `"count": 0` undoes it.
  With `"hostile": true`, fields out of range as well (store.HOSTILE_CORRUPTIONS: times off the
  calendar, a detail past 64 bits, NaN, infinite or over 1 MB, lone surrogates, long ids).
- `DELETE /_sim/tokens`: revoke every token now, as a token expiring early (the next request
  with one gets 401 and keystoneauth authenticates again).
- `POST /_sim/archive`: purge soft-deleted servers, as `nova-manage db archive_deleted_rows`.
- `GET /_sim/info`: site name, seed, URLs, projects.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.dev.sim import behaviour
from connector.dev.sim.api import Request, Response, json_response
from connector.dev.sim.model import KINDS, SimObject
from connector.dev.sim.store import Site

_ID_SEGMENT = re.compile(r"/(?:[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}|[0-9a-fA-F]{32})(?=/|$)")


class BadControl(Exception):
    """A control request the sim cannot act on; answered with 400."""


class Stats:
    """OpenStack API traffic: requests per endpoint (ids folded into `{id}`) and bytes sent, in
    all and per client (the User-Agent's first product name), so that several clients of one
    site can be told apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes_sent = 0
        self.client_requests: Counter[str] = Counter()
        self.client_bytes: Counter[str] = Counter()

    def record(self, request: Request, response: Response) -> None:
        endpoint = f"{request.method} {_ID_SEGMENT.sub('/{id}', request.path.rstrip('/') or '/')}"
        client = request.headers.get("user-agent", "").split("/", 1)[0].strip() or "unknown"
        with self._lock:
            self.requests[endpoint] += 1
            self.bytes_sent += len(response.body)
            self.client_requests[client] += 1
            self.client_bytes[client] += len(response.body)

    def clients(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                client: {"requests": n, "bytes_sent": self.client_bytes[client]}
                for client, n in self.client_requests.items()
            }

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent = 0
            self.client_requests.clear()
            self.client_bytes.clear()


class ChangeLog:
    """Every status change (creations and deletions too) while recording: what a design that
    pushes each change upward would send, in order. Entries are `[time, kind, id, status]`,
    status None for a deletion; a reader pages through them by position."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._lock = threading.Lock()
        self._entries: list[tuple[float, str, str, str | None]] = []
        self._recording = False

    def record(self, on: bool) -> None:
        with self.site.lock:
            if on and not self._recording:
                self.site.observers.append(self._observe)
            elif not on and self._recording:
                self.site.observers.remove(self._observe)
            self._recording = on
            if not on:
                with self._lock:
                    self._entries.clear()

    def read(
        self, after: int, limit: int
    ) -> tuple[int, int, list[tuple[float, str, str, str | None]]]:
        """Entries from position `after` on (at most `limit`), the position after them, and
        how many entries the log holds."""
        with self._lock:
            page = self._entries[after : after + limit]
            length = len(self._entries)
        return after + len(page), length, page

    def _observe(self, action: str, obj: SimObject, old_status: str | None, now: float) -> None:
        if action == "update" and obj.status == old_status:
            return  # a task state or attachment change: no status change to push
        status = None if action == "delete" else obj.status
        with self._lock:
            self._entries.append((now, obj.kind, obj.id, status))


@dataclass(frozen=True, slots=True)
class Fault:
    until: float
    status: int | None
    delay: float
    paths: tuple[str, ...]
    #: the share of matching requests it hits (1.0: every one)
    ratio: float = 1.0


class Faults:
    """Injected failures for API paths, each for a while."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self, paths: list[str] | None = None) -> int:
        """Drop every fault, or those given one of `paths` as a prefix; how many."""
        with self._lock:
            kept = [f for f in self._faults if paths is not None and not set(f.paths) & set(paths)]
            dropped = len(self._faults) - len(kept)
            self._faults = kept
            return dropped

    def matching(self, path: str) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            self._faults = [f for f in self._faults if f.until > now]
            for fault in self._faults:
                hits_path = not fault.paths or any(path.startswith(p) for p in fault.paths)
                if hits_path and (fault.ratio >= 1.0 or random.random() < fault.ratio):
                    return fault
        return None


class Control:
    """Serves `/_sim/`."""

    def __init__(
        self,
        site: Site,
        stats: Stats,
        faults: Faults,
        jobs: behaviour.Jobs,
        info: dict[str, Any],
        revoke_tokens: Callable[[], int],
    ) -> None:
        self.revoke_tokens = revoke_tokens
        self.site = site
        self.stats = stats
        self.faults = faults
        self.jobs = jobs
        self.info = info
        self.changes = ChangeLog(site)

    def handle(self, request: Request) -> Response:
        route = (request.method, request.path.rstrip("/"))
        try:
            if route == ("GET", "/_sim/truth"):
                kinds = request.query.get("kind") or list(KINDS)
                unknown = set(kinds) - set(KINDS)
                if unknown:
                    raise BadControl(f"unknown kind {sorted(unknown)}; kinds are {list(KINDS)}")
                return json_response(200, {"objects": self.site.truth(kinds)})
            if route == ("GET", "/_sim/stats"):
                return json_response(200, self.snapshot())
            if route == ("DELETE", "/_sim/stats"):
                self.stats.reset()
                self.site.reset_counters()
                return Response(204, b"")
            if route == ("POST", "/_sim/changes"):
                record = _body(request).get("record")
                if not isinstance(record, bool):
                    raise BadControl(f"record must be true or false, got {record!r}")
                self.changes.record(record)
                return json_response(200, {"recording": record})
            if route == ("GET", "/_sim/changes"):
                after = _query_int(request, "after", 0)
                limit = _query_int(request, "limit", 10_000)
                position, length, page = self.changes.read(after, max(1, min(limit, 100_000)))
                return json_response(200, {"next": position, "length": length, "changes": page})
            if route == ("POST", "/_sim/churn"):
                return self._churn(_body(request))
            if route == ("POST", "/_sim/storm"):
                return self._storm(_body(request))
            if route == ("POST", "/_sim/faults"):
                return self._fault(_body(request))
            if route == ("DELETE", "/_sim/faults"):
                paths = request.query.get("path")
                if paths:
                    return json_response(200, {"cleared": self.faults.clear(paths)})
                self.faults.clear()
                for kind in KINDS:
                    self.site.hide(kind, 0.0, 0.0)
                return Response(204, b"")
            if route == ("POST", "/_sim/corrupt"):
                return self._corrupt(_body(request))
            if route == ("DELETE", "/_sim/tokens"):
                return json_response(200, {"revoked": self.revoke_tokens()})
            if route == ("POST", "/_sim/archive"):
                return json_response(200, {"archived": self.site.archive()})
            if route == ("GET", "/_sim/info"):
                return json_response(200, self.info)
        except BadControl as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(404, {"error": f"no control endpoint {route[0]} {route[1]}"})

    def snapshot(self) -> dict[str, Any]:
        """The stats document."""
        with self.site.lock:
            counters = self.site.counters
            doc: dict[str, Any] = {
                "status_changes": counters.status_changes,
                "updates": counters.updates,
                "created": counters.created,
                "deleted": counters.deleted,
                "status_changes_by_kind": dict(self.site.changes_by_kind),
                "objects": self.site.counts(),
            }
        doc["requests"] = dict(self.stats.requests)
        doc["bytes_sent"] = self.stats.bytes_sent
        doc["clients"] = self.stats.clients()
        doc["background_jobs"] = self.jobs.running()
        return doc

    def _churn(self, body: dict[str, Any]) -> Response:
        if "changes" in body:
            changes = _number(body, "changes", int, 0, 10_000_000)
            return json_response(200, behaviour.churn(self.site, changes))
        rate = _number(body, "rate", float, 0.0, 1_000_000.0)
        seconds = _number(body, "seconds", float, 0.0, 86400.0)
        self.jobs.start(
            "sim-churn", lambda stop: behaviour.run_churn(self.site, rate, seconds, stop)
        )
        return json_response(202, {"started": "churn", "rate": rate, "seconds": seconds})

    def _storm(self, body: dict[str, Any]) -> Response:
        flaps = _number({"flaps": 1, **body}, "flaps", int, 1, 100)
        seconds = _number({"seconds": 10.0, **body}, "seconds", float, 0.0, 86400.0)
        kinds = body.get("kinds") or list(KINDS)
        if not isinstance(kinds, list) or set(kinds) - set(KINDS):
            raise BadControl(f"kinds must be a list of {list(KINDS)}, got {kinds!r}")
        changed = _number({"changed": 0.0, **body}, "changed", float, 0.0, 1.0)
        plan = behaviour.storm_plan(self.site, kinds)
        endings = behaviour.storm_endings(self.site, plan, changed)
        self.jobs.start(
            "sim-storm",
            lambda stop: behaviour.run_storm(self.site, plan, flaps, seconds, stop, endings),
        )
        objects = len(plan[0]) if plan else 0
        changes = flaps * sum(len(step) for step in plan)
        return json_response(
            202,
            {
                "started": "storm",
                "objects": objects,
                "changed": len(endings),
                "changes": changes,
                "kinds": kinds,
            },
        )

    def _corrupt(self, body: dict[str, Any]) -> Response:
        kind = body.get("kind")
        if kind not in KINDS:
            raise BadControl(f"kind must be one of {list(KINDS)}, got {kind!r}")
        count = _number(body, "count", int, 0, 10_000_000)
        hostile = body.get("hostile", False)
        if not isinstance(hostile, bool):
            raise BadControl(f"hostile must be true or false, got {hostile!r}")
        ids = self.site.set_corrupt(kind, count, hostile)
        corrupt = self.site.corrupt[kind]
        return json_response(200, {"kind": kind, "corrupt": {i: corrupt[i] for i in ids}})

    def _fault(self, body: dict[str, Any]) -> Response:
        seconds = _number(body, "seconds", float, 0.0, 86400.0)
        if "hide" in body:
            hide = body["hide"]
            if not isinstance(hide, dict) or hide.get("kind") not in KINDS:
                raise BadControl(f'hide must be {{"kind": one of {list(KINDS)}, "share": F}}')
            share = _number(hide, "share", float, 0.0, 1.0)
            self.site.hide(hide["kind"], share, seconds)
            return json_response(
                200, {"hide": {"kind": hide["kind"], "share": share}, "seconds": seconds}
            )
        status = body.get("status")
        if status is not None and not (isinstance(status, int) and 400 <= status <= 599):
            raise BadControl(f"status must be an HTTP error status (400-599), got {status!r}")
        delay = _number({"delay": 0.0, **body}, "delay", float, 0.0, 3600.0)
        if status is None and not delay:
            raise BadControl("give a status to answer with, a delay to hang for, or both")
        paths = body.get("paths") or []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise BadControl(f"paths must be a list of path prefixes, got {paths!r}")
        ratio = _number({"ratio": 1.0, **body}, "ratio", float, 0.0, 1.0)
        self.faults.add(Fault(time.monotonic() + seconds, status, delay, tuple(paths), ratio))
        return json_response(
            200,
            {"status": status, "delay": delay, "seconds": seconds, "paths": paths, "ratio": ratio},
        )


def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError as exc:
        raise BadControl(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadControl("body must be a JSON object")
    return body


def _query_int(request: Request, name: str, default: int) -> int:
    text = request.arg(name)
    if text is None:
        return default
    if not text.isdigit():
        raise BadControl(f"{name} must be a whole number, got {text!r}")
    return int(text)


def _number(body: dict[str, Any], name: str, kind: type[Any], lo: float, hi: float) -> Any:
    value = body.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise BadControl(
            f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}"
        )
    if not lo <= value <= hi:
        raise BadControl(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return kind(value)
