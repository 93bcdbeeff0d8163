"""The objects a simulated site holds: one slotted class per kind, and how their times look.

Slotted dataclasses keep 100,000 objects well under the memory budget (a dict per object would
cost several times more). Every object carries the few fields that make up its status, its
owner, and the timestamps and revision the services expose; everything else on the wire is
derived when a response is rendered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

#: Kind names, the same everywhere (truth, stats, records).
SERVER = "server"
VOLUME = "volume"
PORT = "port"
NETWORK = "network"
ROUTER = "router"
FLOATINGIP = "floatingip"
KINDS: tuple[str, ...] = (SERVER, VOLUME, PORT, NETWORK, ROUTER, FLOATINGIP)

#: Detail values in truth: scalars, or a list of ids.
Detail = None | bool | int | float | str | list[str]


@dataclass(slots=True, eq=False)
class SimObject:
    """What every object has. `key` orders the kind's listing; `serial` is creation order."""

    kind: ClassVar[str] = ""
    #: Nova and Neutron keep whole seconds in updated_at; Cinder keeps microseconds.
    whole_seconds: ClassVar[bool] = True

    id: str
    name: str
    project_id: str
    status: str
    created: float
    updated: float
    serial: int
    key: int
    #: Neutron's revision_number; kept for every kind so that truth can order changes.
    revision: int

    def details(self) -> dict[str, Detail]:
        """Kind-specific status details, as truth shows them."""
        return {}


@dataclass(slots=True, eq=False)
class Server(SimObject):
    kind: ClassVar[str] = SERVER

    vm_state: str = "active"
    task_state: str | None = None
    power_state: int = 1
    host: str = ""
    #: Attached volumes and own ports, so that a deletion can detach and clean up like Nova.
    volume_ids: tuple[str, ...] = ()
    port_ids: tuple[str, ...] = ()
    #: Soft-deleted: listed with status DELETED under changes-since until archived.
    deleted: bool = False

    def details(self) -> dict[str, Detail]:
        return {
            "vm_state": self.vm_state,
            "task_state": self.task_state,
            "power_state": self.power_state,
            "host": self.host,
        }


@dataclass(slots=True, eq=False)
class Volume(SimObject):
    kind: ClassVar[str] = VOLUME
    whole_seconds: ClassVar[bool] = False

    size: int = 1
    #: Ids of the servers the volume is attached to.
    attachments: tuple[str, ...] = ()
    host: str = ""

    def details(self) -> dict[str, Detail]:
        return {"attachments": list(self.attachments), "host": self.host}


@dataclass(slots=True, eq=False)
class Port(SimObject):
    kind: ClassVar[str] = PORT

    network_id: str = ""
    device_id: str = ""
    device_owner: str = ""
    host: str = ""
    admin_state_up: bool = True
    mac_address: str = ""
    ip_address: str = ""

    def details(self) -> dict[str, Detail]:
        return {
            "device_id": self.device_id,
            "device_owner": self.device_owner,
            "binding_host": self.host,
            "admin_state_up": self.admin_state_up,
            "network_id": self.network_id,
            "revision_number": self.revision,
        }


@dataclass(slots=True, eq=False)
class Network(SimObject):
    kind: ClassVar[str] = NETWORK

    admin_state_up: bool = True
    shared: bool = False

    def details(self) -> dict[str, Detail]:
        return {"admin_state_up": self.admin_state_up, "revision_number": self.revision}


@dataclass(slots=True, eq=False)
class Router(SimObject):
    kind: ClassVar[str] = ROUTER

    admin_state_up: bool = True
    external_network_id: str = ""

    def details(self) -> dict[str, Detail]:
        return {"admin_state_up": self.admin_state_up, "revision_number": self.revision}


@dataclass(slots=True, eq=False)
class FloatingIP(SimObject):
    kind: ClassVar[str] = FLOATINGIP

    floating_ip_address: str = ""
    floating_network_id: str = ""
    port_id: str | None = None
    router_id: str | None = None
    fixed_ip_address: str | None = None

    def details(self) -> dict[str, Detail]:
        return {
            "port_id": self.port_id,
            "floating_ip_address": self.floating_ip_address,
            "revision_number": self.revision,
        }


CLASSES: dict[str, type[SimObject]] = {
    cls.kind: cls for cls in (Server, Volume, Port, Network, Router, FloatingIP)
}


def stamp(kind: str, now: float) -> float:
    """`now` at the precision the kind's service stores."""
    return float(int(now)) if CLASSES[kind].whole_seconds else round(now, 6)


def iso_z(ts: float) -> str:
    """Whole-second UTC with a Z, as Nova's `updated` and Neutron's `updated_at`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def iso_micro(ts: float) -> str:
    """Microsecond UTC without zone, as Cinder's `updated_at`."""
    whole = int(ts)
    micros = round((ts - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{micros:06d}"


def parse_time(value: str) -> float:
    """An ISO 8601 time (naive means UTC) as epoch seconds; ValueError if it is not one."""
    # An unencoded "+00:00" in a query string arrives as " 00:00".
    parsed = datetime.fromisoformat(value.strip().replace(" ", "+"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
