"""How a simulated site changes: random churn and a restart storm, declared as state tables.

Churn moves random objects along `TRANSITIONS` (a status change each), creates and deletes.
A storm replays what a site restart does: every object of the chosen kinds in a working state
goes through `FLAPS` (transitional states, ending where it started) K times within T seconds;
a chosen fraction of them ends somewhere else instead (`ENDINGS`: a server in ERROR or SHUTOFF,
a volume in error, a port DOWN), so the storm's outcome is known. Objects at rest that a restart
leaves alone (an available volume, an unbound DOWN port, a server in ERROR) stay as they are.
Background jobs run on daemon threads and stop with the site.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from connector.dev.sim.model import (
    FLOATINGIP,
    KINDS,
    NETWORK,
    PORT,
    ROUTER,
    SERVER,
    VOLUME,
    FloatingIP,
    Network,
    Port,
    Router,
    Server,
    SimObject,
    Volume,
)
from connector.dev.sim.store import Site

#: Nova's fields for each server status.
SERVER_STATES: dict[str, dict[str, Any]] = {
    "BUILD": {
        "status": "BUILD",
        "vm_state": "building",
        "task_state": "spawning",
        "power_state": 0,
    },
    "ACTIVE": {"status": "ACTIVE", "vm_state": "active", "task_state": None, "power_state": 1},
    "SHUTOFF": {"status": "SHUTOFF", "vm_state": "stopped", "task_state": None, "power_state": 4},
    "ERROR": {"status": "ERROR", "vm_state": "error", "task_state": None, "power_state": 0},
}

_UP_DOWN: dict[str, tuple[str, ...]] = {"ACTIVE": ("DOWN",), "DOWN": ("ACTIVE",)}

#: Where churn may move an object of each kind from each status.
TRANSITIONS: dict[str, dict[str, tuple[str, ...]]] = {
    SERVER: {
        "BUILD": ("ACTIVE",),
        "ACTIVE": ("SHUTOFF", "SHUTOFF", "SHUTOFF", "ERROR"),
        "SHUTOFF": ("ACTIVE",),
        "ERROR": ("ACTIVE",),
    },
    VOLUME: {
        "creating": ("available",),
        "available": ("in-use",),
        "in-use": ("available",),
        "error": ("available",),
    },
    PORT: {**_UP_DOWN, "BUILD": ("ACTIVE",)},
    NETWORK: _UP_DOWN,
    ROUTER: _UP_DOWN,
    FLOATINGIP: _UP_DOWN,
}


def _server_step(status: str, task_state: str | None) -> dict[str, Any]:
    return {**SERVER_STATES[status], "task_state": task_state}


#: Per kind and resting status: the states a restart walks an object through, in order. The
#: last step is the resting state again. `None` stands for "the attachments it had".
FLAPS: dict[str, dict[str, list[dict[str, Any]]]] = {
    SERVER: {
        "ACTIVE": [
            _server_step("ACTIVE", "powering-off"),
            _server_step("SHUTOFF", None),
            _server_step("SHUTOFF", "powering-on"),
            _server_step("ACTIVE", None),
        ],
        "SHUTOFF": [
            _server_step("SHUTOFF", "powering-on"),
            _server_step("ACTIVE", None),
            _server_step("ACTIVE", "powering-off"),
            _server_step("SHUTOFF", None),
        ],
    },
    VOLUME: {
        "in-use": [
            {"status": "detaching", "attachments": None},
            {"status": "available", "attachments": ()},
            {"status": "attaching", "attachments": ()},
            {"status": "in-use", "attachments": None},
        ],
    },
    PORT: {"ACTIVE": [{"status": "DOWN"}, {"status": "BUILD"}, {"status": "ACTIVE"}]},
    NETWORK: {"ACTIVE": [{"status": "DOWN"}, {"status": "ACTIVE"}]},
    ROUTER: {"ACTIVE": [{"status": "DOWN"}, {"status": "ACTIVE"}]},
    FLOATINGIP: {"ACTIVE": [{"status": "DOWN"}, {"status": "ACTIVE"}]},
}

#: Per kind and resting status: where an object the storm changes ends instead (one is drawn).
ENDINGS: dict[str, dict[str, list[dict[str, Any]]]] = {
    SERVER: {
        "ACTIVE": [_server_step("ERROR", None), _server_step("SHUTOFF", None)],
        "SHUTOFF": [_server_step("ERROR", None)],
    },
    VOLUME: {"in-use": [{"status": "error", "attachments": None}]},
    PORT: {"ACTIVE": [{"status": "DOWN"}]},
    NETWORK: {"ACTIVE": [{"status": "DOWN"}]},
    ROUTER: {"ACTIVE": [{"status": "DOWN"}]},
    FLOATINGIP: {"ACTIVE": [{"status": "DOWN"}]},
}

#: A storm's plan: per step of one flap, the objects that take it and the fields they get.
StormPlan = list[list[tuple[SimObject, dict[str, Any]]]]

#: Objects changed per lock acquisition in a storm, so API requests interleave.
_CHUNK = 2000


def churn(site: Site, changes: int) -> dict[str, int]:
    """Make `changes` random changes now: 80% status transitions, 10% creations, 10%
    deletions, spread over kinds by population. Returns how many of each were made."""
    done = {"transitions": 0, "created": 0, "deleted": 0}
    rng = site.rng
    with site.lock:
        for _ in range(changes):
            now = site.now()
            draw = rng.random()
            if draw < 0.1:
                _create(site, _pick_kind(site), now)
                done["created"] += 1
                continue
            obj = _pick_object(site, _pick_kind(site))
            if obj is None:
                _create(site, _pick_kind(site), now)
                done["created"] += 1
            elif draw < 0.2 and obj.status != "in-use":
                site.delete(obj, now)
                done["deleted"] += 1
            else:
                _transition(site, obj, now)
                done["transitions"] += 1
    return done


def storm_plan(site: Site, kinds: Iterable[str]) -> StormPlan:
    """One flap of a storm: per step, the objects that take it and the fields they get."""
    steps: list[list[tuple[SimObject, dict[str, Any]]]] = []
    with site.lock:
        for kind in kinds:
            for obj in site.live(kind):
                flap = FLAPS[kind].get(obj.status)
                if flap is None:
                    continue
                resting = {"attachments": obj.attachments} if isinstance(obj, Volume) else {}
                for i, fields in enumerate(flap):
                    if len(steps) <= i:
                        steps.append([])
                    if fields.get("attachments", ()) is None:
                        fields = {**fields, **resting}
                    steps[i].append((obj, fields))
    return steps


def storm_endings(site: Site, plan: StormPlan, fraction: float) -> dict[int, dict[str, Any]]:
    """For `fraction` of the storm's objects (drawn with the site's seeded generator), the
    fields of the state they end in instead of their resting one; keyed by `id(obj)`."""
    if not plan or fraction <= 0:
        return {}
    objects = [obj for obj, _fields in plan[0]]
    endings: dict[int, dict[str, Any]] = {}
    with site.lock:
        for obj in site.rng.sample(objects, round(fraction * len(objects))):
            fields = dict(site.rng.choice(ENDINGS[obj.kind][obj.status]))
            if isinstance(obj, Volume) and fields.get("attachments", ()) is None:
                fields["attachments"] = obj.attachments
            endings[id(obj)] = fields
    return endings


def run_storm(
    site: Site,
    plan: StormPlan,
    flaps: int,
    seconds: float,
    stop: threading.Event,
    endings: Mapping[int, dict[str, Any]] | None = None,
) -> None:
    """Apply `plan` `flaps` times, its steps spread evenly over `seconds`; an object in
    `endings` takes those fields instead of its last step of the last flap."""
    last_flap = [list(step) for step in plan]
    if endings:
        last_step = {id(obj): i for i, step in enumerate(plan) for obj, _fields in step}
        for i, step in enumerate(last_flap):
            last_flap[i] = [
                (obj, endings[id(obj)] if last_step[id(obj)] == i and id(obj) in endings else f)
                for obj, f in step
            ]
    phases = [step for _ in range(flaps - 1) for step in plan] + last_flap
    start = time.monotonic()
    for n, step in enumerate(phases):
        for i in range(0, len(step), _CHUNK):
            with site.lock:
                now = site.now()
                for obj, fields in step[i : i + _CHUNK]:
                    if _alive(site, obj):
                        site.update(obj, now, **fields)
        if stop.wait(max(0.0, start + seconds * (n + 1) / len(phases) - time.monotonic())):
            return


def run_churn(site: Site, rate: float, seconds: float, stop: threading.Event) -> None:
    """`rate` changes per second for `seconds`, in small ticks."""
    start = time.monotonic()
    made = 0
    while not stop.is_set():
        elapsed = min(time.monotonic() - start, seconds)
        due = int(rate * elapsed) - made
        if due > 0:
            churn(site, due)
            made += due
        if elapsed >= seconds:
            return
        stop.wait(0.05)


class Jobs:
    """Background churn and storms of one site; `stop()` ends them all."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def running(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


def _alive(site: Site, obj: SimObject) -> bool:
    return site.tables[obj.kind].by_id.get(obj.id) is obj and not (
        isinstance(obj, Server) and obj.deleted
    )


def _pick_kind(site: Site) -> str:
    weights = [site.tables[kind].live for kind in KINDS]
    if not any(weights):
        return SERVER
    return site.rng.choices(KINDS, weights)[0]


def _pick_object(site: Site, kind: str) -> SimObject | None:
    order = site.tables[kind].order
    for _ in range(8):
        if not order:
            return None
        obj = site.tables[kind].by_key[site.rng.choice(order)]
        if _alive(site, obj):
            return obj
    return None


def _transition(site: Site, obj: SimObject, now: float) -> None:
    choices = TRANSITIONS[obj.kind].get(obj.status) or tuple(TRANSITIONS[obj.kind])
    status = site.rng.choice(choices)
    if isinstance(obj, Server):
        site.update(obj, now, **SERVER_STATES[status])
    elif isinstance(obj, Volume):
        _volume_to(site, obj, status, now)
    else:
        site.update(obj, now, status=status)


def _volume_to(site: Site, volume: Volume, status: str, now: float) -> None:
    if status == "in-use":
        server = _pick_object(site, SERVER)
        if server is None:
            return
        assert isinstance(server, Server)
        server.volume_ids = (*server.volume_ids, volume.id)
        site.update(volume, now, status="in-use", attachments=(server.id,))
        return
    for server_id in volume.attachments:
        server = site.tables[SERVER].by_id.get(server_id)
        if isinstance(server, Server):
            server.volume_ids = tuple(v for v in server.volume_ids if v != volume.id)
    site.update(volume, now, status=status, attachments=())


def _create(site: Site, kind: str, now: float) -> None:
    project_id = site.rng.choice(site.projects)[0]
    n = site.tables[kind].live
    fields: Mapping[str, Any]
    if kind == SERVER:
        server = site.create(
            Server,
            now=now,
            name=f"{site.name}-vm-new-{n}",
            project_id=project_id,
            host="compute-001",
            **SERVER_STATES["BUILD"],
        )
        networks = site.tables[NETWORK].order
        port = site.create(
            Port,
            now=now,
            name="",
            project_id=project_id,
            status="DOWN",
            device_id=server.id,
            device_owner="compute:nova",
            host=server.host,
            network_id=site.tables[NETWORK].by_key[networks[0]].id if networks else "",
        )
        server.port_ids = (port.id,)
        return
    if kind == VOLUME:
        site.create(
            Volume,
            now=now,
            name=f"{site.name}-vol-new-{n}",
            project_id=project_id,
            status="creating",
            host="volume-001@lvm#lvm",
        )
        return
    fields = {"name": "", "project_id": project_id, "status": "ACTIVE", "now": now}
    if kind == PORT:
        site.create(Port, **{**fields, "status": "DOWN"})
    elif kind == NETWORK:
        site.create(Network, **{**fields, "name": f"net-new-{n}"})
    elif kind == ROUTER:
        site.create(Router, **{**fields, "name": f"router-new-{n}"})
    else:
        site.create(FloatingIP, **{**fields, "status": "DOWN"})
