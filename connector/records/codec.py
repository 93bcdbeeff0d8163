"""The codec: StatusRecord <-> Kafka value bytes, in one of two framings.

- Avro single-object encoding (default): `C3 01`, the writer schema's 8-byte CRC-64-AVRO
  fingerprint (little-endian), then the Avro body. Needs no server; any Avro library reads it.
- Confluent Schema Registry: byte 0, the 4-byte big-endian schema id, then the Avro body; used
  for writing when a registry URL is configured.

Decoding accepts both framings, finds the writer schema (by fingerprint among the shipped
versions, or by id in the registry) and reads into the current schema. Any bytes that are not a
valid record raise DecodeError naming the reason; nothing else escapes.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer

from connector.errors import KafkaError
from connector.records.checks import record_problem
from connector.records.errors import DecodeError, EncodeError, RegistryError
from connector.records.model import StatusRecord
from connector.records.schemas import (
    ShippedSchema,
    current_schema,
    load_schema,
    shipped_schemas,
)

#: The two-byte marker of Avro single-object encoding.
SINGLE_OBJECT_MARKER = b"\xc3\x01"
#: The first byte of the Confluent Schema Registry wire format.
REGISTRY_MAGIC = b"\x00"
#: Registry subject the schema is registered under (RecordNameStrategy: one subject for all site
#: topics, since every site topic carries the same record).
REGISTRY_SUBJECT = "cascade.connector.StatusRecord"


class RegistryClient(Protocol):
    """What the registry framing needs of a schema registry (`connector.kafka.registry`)."""

    url: str

    def register(self, subject: str, avro_schema: str) -> int:
        """The id of `avro_schema` under `subject`; KafkaError when the registry fails."""
        ...

    def schema(self, schema_id: int) -> tuple[str | None, str | None] | None:
        """(type, text) of schema `schema_id`, None when unknown; KafkaError on failure."""
        ...


class RegistryFraming:
    """Schema ids from a Confluent Schema Registry: the current schema's id for writing (registered
    once), and writer schemas by id for reading (fetched once each)."""

    def __init__(self, client: RegistryClient, subject: str = REGISTRY_SUBJECT) -> None:
        self.url = client.url
        self.subject = subject
        self._client = client
        self._prefix: bytes | None = None
        self._by_id: dict[int, ShippedSchema] = {}

    def __repr__(self) -> str:
        known = sorted(self._by_id)
        return f"RegistryFraming({self.url!r}, subject={self.subject!r}, known_ids={known})"

    def prefix(self) -> bytes:
        """Magic byte and schema id of the current schema, registering it on first use."""
        if self._prefix is None:
            current = current_schema()
            try:
                schema_id = self._client.register(self.subject, json.dumps(current.source))
            except KafkaError as exc:
                # The registry did not do its part; the record was not bad.
                raise RegistryError(str(exc)) from exc
            self._prefix = REGISTRY_MAGIC + schema_id.to_bytes(4, "big")
            self._by_id[schema_id] = current
        return self._prefix

    def writer_schema(self, schema_id: int) -> ShippedSchema:
        """The schema registered under `schema_id`; DecodeError when the registry has none."""
        known = self._by_id.get(schema_id)
        if known is not None:
            return known
        try:
            found = self._client.schema(schema_id)
        except KafkaError as exc:
            raise RegistryError(str(exc)) from exc
        if found is None:
            raise DecodeError(f"unknown schema id {schema_id} in the registry")
        schema_type, schema_str = found
        if schema_type not in (None, "AVRO") or schema_str is None:
            raise DecodeError(f"schema id {schema_id} is a {schema_type} schema, not Avro")
        try:
            writer = load_schema(json.loads(schema_str))
        except Exception as exc:
            # A registry schema is foreign input: any parse failure means this id is unusable.
            raise DecodeError(f"schema id {schema_id} is not a valid Avro schema: {exc}") from exc
        shipped = {s.fingerprint: s for s in shipped_schemas()}
        self._by_id[schema_id] = shipped.get(writer.fingerprint, writer)
        return self._by_id[schema_id]


class Codec:
    """Encodes StatusRecords into Kafka values and decodes them back; thread-compatible, cheap to
    share. Writes single-object encoding, or registry framing when given a RegistryFraming."""

    def __init__(self, registry: RegistryFraming | None = None) -> None:
        self._current = current_schema()
        self._by_fingerprint = {s.fingerprint: s for s in shipped_schemas()}
        self._registry = registry
        self._single_object_prefix = SINGLE_OBJECT_MARKER + self._current.fingerprint

    def __repr__(self) -> str:
        framing = "single-object" if self._registry is None else repr(self._registry)
        return f"Codec(writes {framing}, schema {self._current.file})"

    def encode(self, record: StatusRecord, checked: bool = False) -> bytes:
        """The Kafka value for `record`; EncodeError when the record breaks the record rules.

        `checked`: the record was built from parts that already keep the rules (the publisher's
        records: see `Publisher.observe`), so `record_problem` is not run on it again.
        """
        problem = None if checked else record_problem(record)
        if problem:
            raise EncodeError(f"cannot encode {record.key}: {problem}")
        prefix = self._single_object_prefix if self._registry is None else self._registry.prefix()
        out = io.BytesIO()
        out.write(prefix)
        try:
            schemaless_writer(out, self._current.parsed, _to_avro(record))
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {record.key}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> StatusRecord:
        """The record in a Kafka value (not a tombstone); DecodeError naming the reason if the
        bytes are not a valid record in either framing."""
        writer, start = self._writer_of(data)
        body = io.BytesIO(data)
        body.seek(start)
        # Reading with the writer's own schema skips resolution, the common case by far.
        reader = None if writer is self._current else self._current.plain
        try:
            datum = schemaless_reader(body, writer.plain, reader)
        except EOFError as exc:
            raise DecodeError("truncated body: the record ends early") from exc
        except Exception as exc:
            # fastavro signals corrupt input with many types (ValueError, IndexError,
            # UnicodeDecodeError, its SchemaResolutionError, ...); all mean the bytes are bad.
            raise DecodeError(f"corrupt body: {type(exc).__name__}: {exc}") from exc
        extra = len(data) - body.tell()
        if extra:
            raise DecodeError(f"corrupt body: {extra} bytes after the end of the record")
        if not isinstance(datum, dict):
            raise DecodeError(f"corrupt body: decoded a {type(datum).__name__}, not a record")
        try:
            record = _from_avro(datum)
        except OverflowError as exc:
            raise DecodeError(f"corrupt body: a time out of range: {exc}") from exc
        problem = record_problem(record, from_avro=True)
        if problem:
            raise DecodeError(f"invalid record: {problem}")
        return record

    def _writer_of(self, data: bytes) -> tuple[ShippedSchema, int]:
        if not data:
            raise DecodeError("empty value (a deletion is a null value, not an empty one)")
        if data[:2] == SINGLE_OBJECT_MARKER:
            if len(data) < 10:
                raise DecodeError(f"truncated single-object header: {len(data)} bytes")
            writer = self._by_fingerprint.get(data[2:10])
            if writer is None:
                raise DecodeError(f"unknown schema fingerprint {data[2:10].hex()}")
            return writer, 10
        if data[:1] == REGISTRY_MAGIC:
            if len(data) < 5:
                raise DecodeError(f"truncated schema registry header: {len(data)} bytes")
            schema_id = int.from_bytes(data[1:5], "big")
            if self._registry is None:
                raise DecodeError(
                    f"schema registry framing (schema id {schema_id}) but no schema registry "
                    "is configured (kafka.schema_registry_url)"
                )
            return self._registry.writer_schema(schema_id), 5
        raise DecodeError(
            f"unknown framing: starts with {data[:2].hex()}, expected c301 (Avro single-object "
            "encoding) or 00 (schema registry)"
        )


def _to_avro(record: StatusRecord) -> dict[str, Any]:
    return {
        "site": record.site,
        "kind": record.kind,
        "id": record.id,
        "sequence": record.sequence,
        "observed_at": record.observed_at,
        "status": record.status,
        "name": record.name,
        "project_id": record.project_id,
        "details": record.details,
        "source_updated_at": record.source_updated_at,
        "revision": record.revision,
    }


def _from_avro(datum: dict[str, Any]) -> StatusRecord:
    """The record of a datum read with the `plain` schemas: its times come as microseconds."""
    source = datum["source_updated_at"]
    return StatusRecord(
        site=datum["site"],
        kind=datum["kind"],
        id=datum["id"],
        sequence=datum["sequence"],
        observed_at=_utc(datum["observed_at"]),
        status=datum["status"],
        name=datum["name"],
        project_id=datum["project_id"],
        details=datum["details"],
        source_updated_at=None if source is None else _utc(source),
        revision=datum["revision"],
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(value: Any) -> Any:
    """A timestamp-micros as fastavro converts it (an aware UTC datetime); anything else (a
    foreign writer's other logical type) as read, for `record_problem` to judge."""
    return _EPOCH + timedelta(microseconds=value) if type(value) is int else value
