"""The rules a StatusRecord, a site name and a kind name keep, checked on both sides of Kafka.

The encoder refuses a record that breaks them (fastavro would otherwise turn a 70-bit integer into
a double, or read a 2-tuple as a union hint), and the decoder refuses one that arrives broken, so a
consumer never sees a value that only looks right.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache

from connector.records.model import HEARTBEAT_KIND, KIND_NAMES, SEQUENCE_MAX, StatusRecord

#: A site name is the first part of every key and the suffix of its Kafka topic, so it keeps to
#: the characters a topic name allows (`connector.kafka.topics` applies Kafka's own rules).
_SITE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_LONG_MIN, _LONG_MAX = -(2**63), SEQUENCE_MAX


@lru_cache(maxsize=4096)  # checked for every record decoded, and a consumer sees few sites
def site_name_problem(site: str) -> str | None:
    """Why `site` cannot name a site (it becomes a topic suffix and a key prefix), or None."""
    # fullmatch: `$` would let a trailing newline through.
    if not _SITE_NAME.fullmatch(site):
        return (
            f"site name {site!r} must be non-empty and use only letters, digits, '.', '_' and '-'"
        )
    if site in (".", ".."):
        return f"site name {site!r} is not allowed as a Kafka topic suffix"
    return None


def fits_in_long(value: int) -> bool:
    """Whether `value` is an Avro long (64 bits, signed)."""
    return _LONG_MIN <= value <= _LONG_MAX


def resolve_kind_names(names: Iterable[str]) -> list[str]:
    """Kind names from KIND_NAMES, in the order given; plural forms ("servers") are accepted.
    ValueError naming the unknown one."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name not in KIND_NAMES and name.endswith("s") and name[:-1] in KIND_NAMES:
            name = name[:-1]
        if name not in KIND_NAMES:
            raise ValueError(f"unknown kind {raw!r}; known kinds: {', '.join(KIND_NAMES)}")
        if name not in out:
            out.append(name)
    return out


def record_problem(record: StatusRecord, from_avro: bool = False) -> str | None:
    """Why `record` is not a valid StatusRecord, or None.

    `from_avro`: the record was just read with our schema, so its types and 64-bit ranges hold
    and the details need no check (that is a third of the cost of a decode).
    """
    problem = site_name_problem(record.site)
    if problem:
        return problem
    if not record.kind or "/" in record.kind:
        return f"kind {record.kind!r} must be non-empty and contain no '/'"
    if not record.id:
        return "id must be non-empty"
    if record.kind == HEARTBEAT_KIND and record.id != record.site:
        return f"a heartbeat's id must be its site {record.site!r}, not {record.id!r}"
    if not 0 <= record.sequence <= _LONG_MAX:
        return f"sequence {record.sequence} must be a non-negative 64-bit integer"
    for name, when in (
        ("observed_at", record.observed_at),
        ("source_updated_at", record.source_updated_at),
    ):
        if when is not None and (not isinstance(when, datetime) or when.utcoffset() is None):
            return f"{name} {when!r} must be a timezone-aware datetime"
    if from_avro:
        return None
    if record.revision is not None and not fits_in_long(record.revision):
        return f"revision {record.revision} does not fit in 64 bits"
    for key, value in record.details.items():
        problem = _detail_problem(key, value)
        if problem:
            return problem
    return None


def _detail_problem(key: object, value: object) -> str | None:
    if not isinstance(key, str):
        return f"details key {key!r} must be a string"
    if isinstance(value, float) and not math.isfinite(value):
        # Avro carries it, but no JSON sink can: the top layer would refuse it.
        return f"details[{key!r}] = {value} is not a finite number"
    if value is None or isinstance(value, bool | float | str):
        return None
    if isinstance(value, int):
        if fits_in_long(value):
            return None
        return f"details[{key!r}] = {value} does not fit in 64 bits"
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return f"details[{key!r}] = {value!r}: expected None, bool, int, float, str or a list of str"
