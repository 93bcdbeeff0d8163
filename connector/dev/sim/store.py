"""The state of one simulated site: its objects, the indexes listing needs, and every change.

A `Site` holds one `Table` per kind. A table keeps its objects in the order the service lists
them (newest first for Nova and Cinder, by id for Neutron) as a sorted list of integer keys, so
that a marker turns into a position by bisection, and a list of (updated, key) pairs sorted by
time, so that a changes-since filter selects its candidates by bisection instead of a scan.
Every mutation goes through `Site.create`, `Site.update` or `Site.delete`, under `Site.lock`,
which keeps the indexes, the counters and truth consistent with what the API lists.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from typing import Any, TypeVar

from connector.dev.sim.api import huge_integer
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
    iso_micro,
    iso_z,
    stamp,
)

ObjT = TypeVar("ObjT", bound=SimObject)

#: Projects every site has; the clouds.yaml user is an admin scoped to the first.
PROJECT_NAMES = ("admin", "demo", "ops")

_first = itemgetter(0)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Bounds on a time (`updated` in `Table.scan`); None means unbounded on that side."""

    lo: float | None = None
    lo_inclusive: bool = True
    hi: float | None = None
    hi_inclusive: bool = True

    def holds(self, at: float) -> bool:
        """Whether `at` is within the bounds."""
        above = self.lo is None or (at >= self.lo if self.lo_inclusive else at > self.lo)
        below = self.hi is None or (at <= self.hi if self.hi_inclusive else at < self.hi)
        return above and below


class Table:
    """One kind's objects, in listing order and in update-time order."""

    def __init__(self, kind: str, newest_first: bool) -> None:
        self.kind = kind
        #: (share, until on the monotonic clock): that share of the objects is left out of
        #: listings, as a Nova cell that is down leaves its servers out
        self.hidden: tuple[float, float] = (0.0, 0.0)
        self.newest_first = newest_first
        self.by_id: dict[str, SimObject] = {}
        self.by_key: dict[int, SimObject] = {}
        self.order: list[int] = []
        self.changes: list[tuple[float, int]] = []
        #: Objects that exist (soft-deleted servers excluded).
        self.live = 0

    def key_for(self, object_id: str, serial: int) -> int:
        # Negative serials sort newest first; a UUID's integer sorts like its string.
        return -serial if self.newest_first else uuid.UUID(object_id).int

    def insert(self, obj: SimObject) -> None:
        self.by_id[obj.id] = obj
        self.by_key[obj.key] = obj
        insort(self.order, obj.key)
        insort(self.changes, (obj.updated, obj.key))

    def remove(self, obj: SimObject) -> None:
        del self.by_id[obj.id]
        del self.by_key[obj.key]
        del self.order[bisect_left(self.order, obj.key)]
        del self.changes[bisect_left(self.changes, (obj.updated, obj.key))]

    def retime(self, obj: SimObject, updated: float) -> None:
        del self.changes[bisect_left(self.changes, (obj.updated, obj.key))]
        obj.updated = updated
        insort(self.changes, (updated, obj.key))

    def scan(
        self,
        *,
        after: int | None,
        span: TimeRange | None,
        match: Callable[[SimObject], bool],
        limit: int | None,
    ) -> list[SimObject]:
        """Objects in listing order after key `after`, updated within `span`, that `match`."""
        keys: list[int]
        if span is None:
            keys = self.order
        else:
            lo = 0
            hi = len(self.changes)
            if span.lo is not None:
                pick = bisect_left if span.lo_inclusive else bisect_right
                lo = pick(self.changes, span.lo, key=_first)
            if span.hi is not None:
                pick = bisect_right if span.hi_inclusive else bisect_left
                hi = pick(self.changes, span.hi, key=_first)
            keys = sorted(key for _, key in self.changes[lo:hi])
        start = 0 if after is None else bisect_right(keys, after)
        out: list[SimObject] = []
        share, until = self.hidden
        hiding = share > 0 and time.monotonic() < until
        for key in islice(keys, start, None):
            obj = self.by_key[key]
            if hiding and hidden(obj.id, share):
                continue
            if match(obj):
                out.append(obj)
                if limit is not None and len(out) >= limit:
                    break
        return out


@dataclass(slots=True)
class Counters:
    """What the site went through since start (or the last reset)."""

    #: Status transitions, creations and deletions: one push each in a push-every-change design.
    status_changes: int = 0
    #: Every recorded change, also those that keep the status (task state, attachments).
    updates: int = 0
    created: int = 0
    deleted: int = 0


def hidden(object_id: str, share: float) -> bool:
    """Whether a hide of `share` covers the object: the same objects for the same share."""
    return uuid.UUID(object_id).int % 10_000 < share * 10_000


#: How `Site.spoil` serves a corrupt object, in turn: no id, a time that does not parse, a status
#: that is not a string.
CORRUPTIONS = ("no-id", "bad-time", "bad-status")
#: The hostile ones (`/_sim/corrupt` with `"hostile": true`), in turn: the three above, and
#: fields out of range: times off the calendar in UTC, a detail past 64 bits, NaN or infinite,
#: text with a lone surrogate (a detail, the id), an id too long, an id that is an integer of more
#: digits than Python converts (4,300). One object in HUGE_EVERY (the
#: first after a whole round of these) carries a detail of over 1 MB instead (more than a Kafka
#: message takes), rarer because each one costs a megabyte in every listing.
HOSTILE_CORRUPTIONS = (
    *CORRUPTIONS,
    "year-1",
    "year-9999",
    "int-70-bits",
    "nan",
    "infinity",
    "surrogate-detail",
    "surrogate-id",
    "long-id",
    "huge-int-id",
)
HUGE = "huge-detail"
HUGE_EVERY = 500
#: The field of each kind a hostile corruption puts a detail value in (one the poller reads).
_DETAIL_FIELD = {
    SERVER: "OS-EXT-STS:power_state",
    VOLUME: "os-vol-mig-status-attr:migstat",
    PORT: "device_owner",
    FLOATINGIP: "fixed_ip_address",
}
#: What each detail corruption puts there.
_DETAIL_VALUE: dict[str, Any] = {
    "int-70-bits": 2**70,
    "nan": float("nan"),
    "infinity": float("-inf"),
    "surrogate-detail": "text-\ud800",
    HUGE: "h" * 1_100_000,
}
_TIME_VALUE = {"year-1": "0001-01-01T00:00:00+01:00", "year-9999": "9999-12-31T23:59:59-01:00"}


class Site:
    """All objects of one site, their indexes and counters, guarded by one lock."""

    def __init__(self, name: str, seed: int, clock_skew: float = 0.0) -> None:
        self.name = name
        self.seed = seed
        #: seconds the site's clock is ahead of the machine's (negative: behind)
        self.clock_skew = clock_skew
        #: kind -> id -> corruption, for objects served malformed (`/_sim/corrupt`)
        self.corrupt: dict[str, dict[str, str]] = {}
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.tables = {kind: Table(kind, newest_first=kind in (SERVER, VOLUME)) for kind in KINDS}
        self.projects = [(self._hex_id(), name) for name in PROJECT_NAMES]
        self.user_id = self._hex_id()
        self.counters = Counters()
        self.changes_by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._serial = 0
        #: Called under the lock after every counted change: (action, object, old status, now),
        #: action being create, update or delete. The notifier (connector.dev.sim.notify) and the
        #: freshness benchmark listen here; an observer must be quick and must not raise.
        self.observers: list[Callable[[str, SimObject, str | None, float], None]] = []

    def now(self) -> float:
        """The site's clock: the machine's, moved by `clock_skew`."""
        return time.time() + self.clock_skew

    # -- faults ----------------------------------------------------------------------------

    def set_corrupt(self, kind: str, count: int, hostile: bool = False) -> list[str]:
        """Serve `count` live objects of `kind` (the first created) malformed, in listing order
        each in the next of CORRUPTIONS (HOSTILE_CORRUPTIONS, and HUGE now and then, with
        `hostile`); 0 serves them all well again. Returns the ids."""
        ways = HOSTILE_CORRUPTIONS if hostile else CORRUPTIONS
        with self.lock:
            chosen = [obj.id for obj in islice(self.live(kind), count)]
            ordered = sorted(chosen, key=lambda i: self.tables[kind].by_id[i].key)
            self.corrupt[kind] = {
                object_id: HUGE if hostile and n % HUGE_EVERY == len(ways) else ways[n % len(ways)]
                for n, object_id in enumerate(ordered)
            }
            return ordered

    def spoil(self, kind: str, object_id: str, doc: dict[str, Any], updated: str) -> dict[str, Any]:
        """`doc` as served: malformed when the object is set corrupt (`updated`: the service's
        wire name of the update time)."""
        how = self.corrupt.get(kind, {}).get(object_id)
        if how is None:
            return doc
        doc = dict(doc)
        if how == "no-id":
            del doc["id"]
        elif how == "bad-time":
            doc[updated] = "not-a-time"
        elif how in _TIME_VALUE:
            doc[updated] = _TIME_VALUE[how]
        elif how in _DETAIL_VALUE:
            doc[_DETAIL_FIELD.get(kind, "name")] = _DETAIL_VALUE[how]
        elif how == "surrogate-id":
            doc["id"] = f"{object_id}\udc80"
        elif how == "long-id":
            doc["id"] = object_id * 8
        elif how == "huge-int-id":
            doc["id"] = huge_integer(uuid.UUID(object_id).int)
        else:
            doc["status"] = {"value": doc.get("status")}
        return doc

    def hide(self, kind: str, share: float, seconds: float) -> None:
        """Leave `share` of the kind's objects out of every listing for `seconds`."""
        with self.lock:
            self.tables[kind].hidden = (share, time.monotonic() + seconds)

    # -- ids -------------------------------------------------------------------------------

    def _hex_id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    def new_id(self) -> str:
        """A random-looking UUID that the seed fixes."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    @property
    def admin_project_id(self) -> str:
        return self.projects[0][0]

    # -- mutations -------------------------------------------------------------------------

    def create(
        self,
        cls: type[ObjT],
        *,
        now: float,
        created: float | None = None,
        count: bool = True,
        **fields: Any,
    ) -> ObjT:
        """Add a new object; `count=False` for the initial population, which is no change."""
        with self.lock:
            self._serial += 1
            object_id = fields.pop("id", None) or self.new_id()
            table = self.tables[cls.kind]
            updated = stamp(cls.kind, now)
            obj = cls(
                id=object_id,
                serial=self._serial,
                key=table.key_for(object_id, self._serial),
                created=stamp(cls.kind, created if created is not None else now),
                updated=updated,
                revision=1,
                **fields,
            )
            table.insert(obj)
            table.live += 1
            if count:
                self._count(cls.kind, status_changed=True)
                self.counters.created += 1
                self._observe("create", obj, None, now)
            return obj

    def update(self, obj: SimObject, now: float, **fields: Any) -> bool:
        """Set fields on a live object; False (and no change recorded) if nothing differs."""
        with self.lock:
            old_status = obj.status
            changed, status_changed = self._apply(obj, now, fields)
            if changed:
                self._count(obj.kind, status_changed=status_changed)
                self._observe("update", obj, old_status, now)
            return changed

    def _apply(self, obj: SimObject, now: float, fields: Mapping[str, Any]) -> tuple[bool, bool]:
        """Set fields, bump the revision and the updated time; (changed, status changed)."""
        if all(getattr(obj, name) == value for name, value in fields.items()):
            return False, False
        status_changed = "status" in fields and fields["status"] != obj.status
        for name, value in fields.items():
            setattr(obj, name, value)
        obj.revision += 1
        self.tables[obj.kind].retime(obj, stamp(obj.kind, now))
        return True, status_changed

    def delete(self, obj: SimObject, now: float) -> None:
        """Remove an object; a server stays as DELETED (until archived) and releases its
        volumes and ports, as Nova does."""
        with self.lock:
            table = self.tables[obj.kind]
            if isinstance(obj, Server):
                if obj.deleted:
                    return
                for volume_id in obj.volume_ids:
                    volume = self.tables[VOLUME].by_id.get(volume_id)
                    if isinstance(volume, Volume):
                        self.update(volume, now, status="available", attachments=())
                for port_id in obj.port_ids:
                    port = self.tables[PORT].by_id.get(port_id)
                    if port is not None:
                        self.delete(port, now)
                self._apply(
                    obj,
                    now,
                    {
                        "status": "DELETED",
                        "vm_state": "deleted",
                        "task_state": None,
                        "power_state": 0,
                        "volume_ids": (),
                        "port_ids": (),
                        "deleted": True,
                    },
                )
            else:
                if isinstance(obj, Volume):
                    self._unlink_volume(obj)
                table.remove(obj)
            table.live -= 1
            self._count(obj.kind, status_changed=True)
            self.counters.deleted += 1
            self._observe("delete", obj, obj.status, now)

    def archive(self) -> int:
        """Purge soft-deleted servers (nova-manage db archive_deleted_rows); returns how many."""
        with self.lock:
            table = self.tables[SERVER]
            gone = [obj for obj in table.by_id.values() if isinstance(obj, Server) and obj.deleted]
            for obj in gone:
                table.remove(obj)
            return len(gone)

    def _unlink_volume(self, volume: Volume) -> None:
        for server_id in volume.attachments:
            server = self.tables[SERVER].by_id.get(server_id)
            if isinstance(server, Server):
                server.volume_ids = tuple(v for v in server.volume_ids if v != volume.id)

    def _count(self, kind: str, *, status_changed: bool) -> None:
        self.counters.updates += 1
        if status_changed:
            self.counters.status_changes += 1
            self.changes_by_kind[kind] += 1

    def _observe(self, action: str, obj: SimObject, old_status: str | None, now: float) -> None:
        for observer in self.observers:
            observer(action, obj, old_status, now)

    def reset_counters(self) -> None:
        with self.lock:
            self.counters = Counters()
            self.changes_by_kind = dict.fromkeys(KINDS, 0)

    # -- reading ---------------------------------------------------------------------------

    def live(self, kind: str) -> Iterable[SimObject]:
        """Objects of `kind` that exist (not soft-deleted); call with the lock held."""
        for obj in self.tables[kind].by_id.values():
            if not (isinstance(obj, Server) and obj.deleted):
                yield obj

    def truth(self, kinds: Iterable[str] = KINDS) -> list[dict[str, Any]]:
        """Every live object now, as `{"kind", "id", "status", "name", "project_id", ...}`."""
        with self.lock:
            return [truth_of(obj) for kind in kinds for obj in self.live(kind)]

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {kind: table.live for kind, table in self.tables.items()}

    # -- initial population ----------------------------------------------------------------

    def populate(self, counts: Mapping[str, int], now: float | None = None) -> None:
        """Create the seeded objects: the same seed and counts give the same ids, names,
        statuses and relations (times are relative to `now`)."""
        now = self.now() if now is None else now
        rng = self.rng
        hosts = [f"compute-{i:03d}" for i in range(1, max(1, counts.get(SERVER, 0) // 40) + 2)]

        def times() -> dict[str, float]:
            created = now - rng.uniform(86400, 60 * 86400)
            return {"created": created, "now": created + rng.uniform(0, now - created)}

        def project() -> str:
            return rng.choice(self.projects)[0]

        with self.lock:
            networks = [
                self.create(
                    Network,
                    name=f"net-{i}",
                    project_id=project(),
                    status="ACTIVE" if rng.random() < 0.97 else "DOWN",
                    count=False,
                    **times(),
                )
                for i in range(counts.get(NETWORK, 0))
            ]
            routers = [
                self.create(
                    Router,
                    name=f"router-{i}",
                    project_id=project(),
                    status="ACTIVE",
                    external_network_id=networks[0].id if networks else "",
                    count=False,
                    **times(),
                )
                for i in range(counts.get(ROUTER, 0))
            ]
            servers = [
                self._seed_server(i, project(), rng.choice(hosts), times())
                for i in range(counts.get(SERVER, 0))
            ]
            compute_ports = self._seed_ports(
                counts.get(PORT, 0), servers, networks, routers, times, project
            )
            self._seed_volumes(counts.get(VOLUME, 0), servers, times, project)
            for i in range(counts.get(FLOATINGIP, 0)):
                port = rng.choice(compute_ports) if compute_ports and rng.random() < 0.6 else None
                self.create(
                    FloatingIP,
                    name="",
                    project_id=port.project_id if port else project(),
                    status="ACTIVE" if port else "DOWN",
                    floating_ip_address=f"172.24.{(i >> 8) & 255}.{i & 255}",
                    floating_network_id=networks[0].id if networks else "",
                    port_id=port.id if port else None,
                    fixed_ip_address=port.ip_address if port else None,
                    router_id=routers[0].id if port and routers else None,
                    count=False,
                    **times(),
                )

    def _seed_server(self, i: int, project_id: str, host: str, when: dict[str, float]) -> Server:
        draw = self.rng.random()
        if draw < 0.85:
            state: dict[str, Any] = {"status": "ACTIVE", "vm_state": "active", "power_state": 1}
        elif draw < 0.96:
            state = {"status": "SHUTOFF", "vm_state": "stopped", "power_state": 4}
        else:
            state = {"status": "ERROR", "vm_state": "error", "power_state": 0}
        return self.create(
            Server,
            name=f"{self.name}-vm-{i}",
            project_id=project_id,
            host=host,
            count=False,
            **state,
            **when,
        )

    def _seed_ports(
        self,
        n: int,
        servers: list[Server],
        networks: list[Network],
        routers: list[Router],
        times: Callable[[], dict[str, float]],
        project: Callable[[], str],
    ) -> list[Port]:
        rng = self.rng
        compute: list[Port] = []
        for i in range(n):
            network_id = rng.choice(networks).id if networks else ""
            extra: dict[str, Any]
            if i < len(servers):
                server = servers[i]
                extra = {
                    "device_id": server.id,
                    "device_owner": "compute:nova",
                    "host": server.host,
                    "status": "ACTIVE" if server.status == "ACTIVE" else "DOWN",
                    "project_id": server.project_id,
                }
            elif i % 3 == 0:
                extra = {
                    "device_id": f"dhcp-{network_id}",
                    "device_owner": "network:dhcp",
                    "host": "network-001",
                    "status": "ACTIVE",
                    "project_id": project(),
                }
            elif i % 3 == 1 and routers:
                extra = {
                    "device_id": rng.choice(routers).id,
                    "device_owner": "network:router_interface",
                    "host": "network-001",
                    "status": "ACTIVE",
                    "project_id": project(),
                }
            else:
                extra = {"status": "DOWN", "project_id": project()}
            port = self.create(
                Port,
                name="",
                network_id=network_id,
                mac_address=f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                ip_address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                count=False,
                **extra,
                **times(),
            )
            if i < len(servers):
                servers[i].port_ids = (port.id,)
                compute.append(port)
        return compute

    def _seed_volumes(
        self,
        n: int,
        servers: list[Server],
        times: Callable[[], dict[str, float]],
        project: Callable[[], str],
    ) -> None:
        rng = self.rng
        for i in range(n):
            draw = rng.random()
            server = rng.choice(servers) if servers and draw < 0.7 else None
            status = "in-use" if server else ("available" if draw < 0.97 else "error")
            volume = self.create(
                Volume,
                name=f"{self.name}-vol-{i}",
                project_id=server.project_id if server else project(),
                status=status,
                size=rng.choice((1, 10, 20, 50, 100)),
                host="volume-001@lvm#lvm",
                attachments=(server.id,) if server else (),
                count=False,
                **times(),
            )
            if server:
                server.volume_ids = (*server.volume_ids, volume.id)


def truth_of(obj: SimObject) -> dict[str, Any]:
    """One object as truth shows it."""
    updated = iso_z(obj.updated) if obj.whole_seconds else iso_micro(obj.updated)
    return {
        "kind": obj.kind,
        "id": obj.id,
        "status": obj.status,
        "name": obj.name,
        "project_id": obj.project_id,
        "updated_at": updated,
        **obj.details(),
    }
