"""The Avro schemas shipped in `schemas/` (every version kept), their fingerprints, and the check
that the current version can read all earlier ones.

Files are `status-v<N>.avsc`; the highest N is the current (reader and writer) schema. A
fingerprint is the CRC-64-AVRO of the schema's Parsing Canonical Form, as the 8 little-endian
bytes that Avro single-object encoding puts after its marker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

_FILE = re.compile(r"^status-v(\d+)\.avsc$")

#: Avro type promotions a reader may apply to a writer's value (Avro spec, "Schema Resolution").
_PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}


@dataclass(frozen=True)
class ShippedSchema:
    """One version of the record schema as shipped."""

    version: int
    file: str
    source: dict[str, Any]  #: the .avsc as JSON
    parsed: dict[str, Any]  #: fastavro's parsed form, for writing
    #: the parsed form without the timestamp-micros logical type, for reading: fastavro's own
    #: conversion of the times into datetimes cost a tenth of a decode; the codec converts them
    plain: dict[str, Any]
    canonical: str  #: Avro Parsing Canonical Form
    fingerprint: bytes  #: CRC-64-AVRO of `canonical`, 8 bytes little-endian

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


def schema_fingerprint(canonical: str) -> bytes:
    """CRC-64-AVRO of a canonical form, as the 8 little-endian bytes of single-object encoding."""
    # fastavro already renders this fingerprint in little-endian byte order.
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def load_schema(source: dict[str, Any], version: int = 0, file: str = "") -> ShippedSchema:
    """Parse one schema (JSON) into a ShippedSchema."""
    parsed = parse_schema(source)
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a record schema, got {parsed!r}")
    canonical = to_parsing_canonical_form(parsed)
    plain = parse_schema(_without_micros(source))
    if not isinstance(plain, dict):
        raise ValueError(f"expected a record schema, got {plain!r}")
    return ShippedSchema(
        version, file, source, parsed, plain, canonical, schema_fingerprint(canonical)
    )


def _without_micros(schema: Any) -> Any:
    """`schema` (JSON) with every `"logicalType": "timestamp-micros"` left out: a plain long."""
    if isinstance(schema, list):
        return [_without_micros(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        name: _without_micros(value)
        for name, value in schema.items()
        if not (name == "logicalType" and value == "timestamp-micros")
    }


@cache
def shipped_schemas() -> tuple[ShippedSchema, ...]:
    """Every shipped version, oldest first."""
    out = []
    for entry in (resources.files("connector.records") / "schemas").iterdir():
        match = _FILE.match(entry.name)
        if match:
            source = json.loads(entry.read_text(encoding="utf-8"))
            out.append(load_schema(source, int(match.group(1)), entry.name))
    if not out:
        raise RuntimeError("no status-v<N>.avsc schema is shipped with the package")
    return tuple(sorted(out, key=lambda s: s.version))


def current_schema() -> ShippedSchema:
    """The schema records are written with and read into: the highest shipped version."""
    return shipped_schemas()[-1]


def describe_schemas() -> list[str]:
    """Every shipped version with its fingerprint, then its JSON, for `schemas show`."""
    current = current_schema()
    out = []
    for schema in shipped_schemas():
        mark = " (current)" if schema is current else ""
        out.append(
            f"# {schema.file}{mark}: CRC-64-AVRO fingerprint {schema.fingerprint_hex} "
            "(as on the wire, little-endian)"
        )
        out.append(json.dumps(schema.source, indent=2))
    return out


def check_shipped() -> list[str]:
    """Problems with the shipped schemas: a version the current one cannot read, an optional
    field without a default. Empty when all is well."""
    current = current_schema()
    problems = [f"{current.file}: {p}" for p in lint_schema(current.source)]
    for old in shipped_schemas():
        problems += [
            f"{current.file} cannot read {old.file}: {p}"
            for p in read_problems(old.parsed, current.parsed)
        ]
    return problems


def lint_schema(source: dict[str, Any]) -> list[str]:
    """The rules every version keeps so that it can evolve: a named, namespaced record whose
    nullable fields all have a default."""
    problems = []
    if source.get("type") != "record" or not source.get("name") or not source.get("namespace"):
        problems.append("the top level must be a named record with a namespace")
    for field in source.get("fields", []):
        nullable = isinstance(field["type"], list) and "null" in field["type"]
        if nullable and "default" not in field:
            problems.append(f"optional field {field['name']!r} has no default")
    return problems


def read_problems(writer: Any, reader: Any, path: str = "") -> list[str]:
    """Why data written with `writer` cannot always be read with `reader` (both fastavro parsed
    schemas), following the Avro spec's resolution rules; empty when it always can."""
    where = path or "record"
    if isinstance(writer, list):
        # Any branch may have been written, so each must resolve.
        return [p for branch in writer for p in read_problems(branch, reader, path)]
    if isinstance(reader, list):
        if any(not read_problems(writer, branch, path) for branch in reader):
            return []
        return [f"{where}: writer type {_name(writer)} matches no branch of the reader's union"]
    w_type, r_type = _type(writer), _type(reader)
    if w_type != r_type:
        if (w_type, r_type) in _PROMOTIONS:
            return []
        return [f"{where}: writer type {_name(writer)} cannot be read as {_name(reader)}"]
    if w_type in ("record", "enum", "fixed") and writer["name"] != reader["name"]:
        aliases = reader.get("aliases", [])
        if writer["name"] not in aliases:
            return [f"{where}: writer {writer['name']} is not reader {reader['name']}"]
    if w_type == "record":
        return _record_problems(writer, reader, path)
    if w_type == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{where}: reader enum lacks symbols {sorted(missing)} and has no default"]
    if w_type == "fixed" and writer["size"] != reader["size"]:
        return [f"{where}: fixed size {writer['size']} != {reader['size']}"]
    if w_type == "array":
        return read_problems(writer["items"], reader["items"], f"{path}[]")
    if w_type == "map":
        return read_problems(writer["values"], reader["values"], f"{path}{{}}")
    return []


def _record_problems(writer: dict[str, Any], reader: dict[str, Any], path: str) -> list[str]:
    written = {f["name"]: f for f in writer["fields"]}
    problems = []
    for field in reader["fields"]:
        names = [field["name"], *field.get("aliases", [])]
        source = next((written[n] for n in names if n in written), None)
        sub = f"{path}.{field['name']}" if path else field["name"]
        if source is None:
            if "default" not in field:
                problems.append(f"{sub}: missing in the writer and has no default")
        else:
            problems += read_problems(source["type"], field["type"], sub)
    return problems


def _type(schema: Any) -> str:
    return str(schema["type"] if isinstance(schema, dict) else schema)


def _name(schema: Any) -> str:
    if isinstance(schema, dict) and "name" in schema:
        return str(schema["name"])
    return _type(schema)
