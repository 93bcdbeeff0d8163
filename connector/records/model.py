"""The typed records the whole connector speaks in: an object's status, a deletion, a heartbeat.

Nothing outside the poller sees an openstacksdk object, and nothing outside the codec sees Avro:
they convert to and from these types at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

#: Kind-specific detail values: scalars, or a list of strings (e.g. attached server ids).
DetailValue = None | bool | int | float | str | list[str]

#: The highest site sequence an Avro long holds.
SEQUENCE_MAX = 2**63 - 1

#: Kind of the site heartbeat record; its id is the site name.
HEARTBEAT_KIND = "site"

#: The kinds of object a site publishes: the rows of the site's kinds table
#: (`connector.site.kinds`), named here so that the settings can check `site.kinds` without it.
KIND_NAMES: tuple[str, ...] = ("server", "volume", "port", "floatingip", "network", "router")

#: Header carrying the per-site sequence on a tombstone (decimal ASCII), so that a sink that marks
#: deletions can still order them against updates.
SEQUENCE_HEADER = "cascade.sequence"

#: Header naming the poller instance that published a message (its `site.instance_id`), on every
#: record, tombstone and heartbeat, so an operator can tell which of a site's pollers wrote what.
INSTANCE_HEADER = "cascade.instance"


def record_key(site: str, kind: str, object_id: str) -> str:
    """The Kafka key of an object: `<site>/<kind>/<id>`, one key per object."""
    return f"{site}/{kind}/{object_id}"


def parse_key(key: str) -> tuple[str, str, str]:
    """(site, kind, id) from a key; ValueError if it is not `<site>/<kind>/<id>`."""
    site, sep1, rest = key.partition("/")
    kind, sep2, object_id = rest.partition("/")
    if not (sep1 and sep2 and site and kind and object_id):
        raise ValueError(f"expected a key <site>/<kind>/<id>, got {key!r}")
    return site, kind, object_id


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """The status of one object in one site, as the poller observed it."""

    site: str
    kind: str
    id: str
    status: str | None
    sequence: int  #: per-site, only grows, also across poller restarts
    observed_at: datetime  #: when the poller saw this state (UTC)
    name: str | None = None
    project_id: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)
    source_updated_at: datetime | None = None  #: the service's own updated time
    revision: int | None = None  #: the service's revision number, where it has one

    @property
    def key(self) -> str:
        return record_key(self.site, self.kind, self.id)

    @property
    def is_heartbeat(self) -> bool:
        return self.kind == HEARTBEAT_KIND


@dataclass(frozen=True, slots=True)
class Deletion:
    """An object that no longer exists: a tombstone on its key, with the site sequence."""

    site: str
    kind: str
    id: str
    sequence: int | None  #: from SEQUENCE_HEADER; None when a tombstone came without it

    @property
    def key(self) -> str:
        return record_key(self.site, self.kind, self.id)


#: What the top layer applies: the latest state of a key, or its deletion.
Change = StatusRecord | Deletion
