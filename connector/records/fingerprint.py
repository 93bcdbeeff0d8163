"""What the top layer shows of an object, as one 64-bit content fingerprint.

The site's publisher keeps one per object and publishes an observation only when it changed (and
rebuilds them from its topic at a restart, in another process: so the fingerprint is stable
across processes, not Python's salted `hash()`); the top side's windows skip a change whose
fingerprint the top layer already holds. The content is status, name, project and details; the
service's revision and times are left out on purpose: they move on edits that do not change
status (a description, metadata), and those are not worth a record.
"""

from __future__ import annotations

import marshal
from collections.abc import Mapping
from hashlib import blake2b

from connector.records.model import Change, Deletion, DetailValue, StatusRecord

#: The fingerprint of a deletion (a content fingerprint is never negative).
DELETED = -1

#: marshal's format 2: from format 3 on, an object seen twice may be written as a back-reference
#: depending on its reference count, so equal values could give different bytes; in format 2 the
#: bytes depend on the values alone, and they tell None from "", 1 from 1.0, "1" and True.
_MARSHAL_VERSION = 2


def content_fingerprint(
    status: str | None,
    name: str | None,
    project_id: str | None,
    details: Mapping[str, DetailValue],
) -> int:
    """8 bytes of BLAKE2b over the fields (details sorted by name), as an unsigned int."""
    canonical = marshal.dumps((status, name, project_id, sorted(details.items())), _MARSHAL_VERSION)
    return int.from_bytes(blake2b(canonical, digest_size=8).digest(), "big")


def record_fingerprint(record: StatusRecord) -> int:
    return content_fingerprint(record.status, record.name, record.project_id, record.details)


def change_fingerprint(change: Change) -> int:
    """A record's content fingerprint, or DELETED."""
    if isinstance(change, Deletion):
        return DELETED
    return record_fingerprint(change)
