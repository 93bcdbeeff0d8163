"""Schema Registry framing, against a small local HTTP server speaking the two registry endpoints
the codec uses (register a schema under a subject, fetch a schema by id).

This pins the wire layout (magic byte, big-endian id), the caching, and the error mapping
through the real confluent_kafka client, with failures a real registry will not stage on
request; tests/integration/test_schema_registry.py runs the framing against a real registry.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastavro import schemaless_writer

from connector.codecs import codec_from_settings
from connector.config import KafkaSettings
from connector.kafka.registry import SchemaRegistry
from connector.records.codec import REGISTRY_SUBJECT, Codec, RegistryFraming
from connector.records.errors import DecodeError, RegistryError
from connector.records.schemas import current_schema, load_schema, shipped_schemas
from tests.support.records import EXAMPLES

#: Ids above 255 so that a little-endian or 1-byte id would show.
FIRST_ID = 0x0102


class _Registry:
    """The registry's state: schemas by id, and every request seen."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def register(self, schema: str) -> int:
        with self.lock:
            for schema_id, known in self.schemas.items():
                if known == schema:
                    return schema_id
            schema_id = FIRST_ID + len(self.schemas)
            self.schemas[schema_id] = schema
            return schema_id


def _handler(registry: _Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            registry.requests.append(f"POST {self.path}")
            match = re.fullmatch(r"/subjects/([^/]+)/versions(\?.*)?", self.path)
            if not match:
                return self._reply(404, {"error_code": 404, "message": "not found"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._reply(200, {"id": registry.register(body["schema"])})

        def do_GET(self) -> None:
            registry.requests.append(f"GET {self.path}")
            match = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
            schema = registry.schemas.get(int(match.group(1))) if match else None
            if schema is None:
                return self._reply(404, {"error_code": 40403, "message": "Schema not found"})
            self._reply(200, {"schema": schema})

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[_Registry, str]]:
    state = _Registry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_framing_is_magic_byte_and_big_endian_id(
    registry: tuple[_Registry, str],
) -> None:
    state, url = registry
    codec = codec_from_settings(KafkaSettings(schema_registry_url=url))
    data = codec.encode(EXAMPLES[0])
    assert data[0] == 0
    assert data[1:5] == FIRST_ID.to_bytes(4, "big")
    assert json.loads(state.schemas[FIRST_ID])["name"] == "StatusRecord"
    assert state.requests == [f"POST /subjects/{REGISTRY_SUBJECT}/versions?normalize=False"]
    assert codec.decode(data) == EXAMPLES[0]


def test_schema_is_registered_once_and_fetched_once(registry: tuple[_Registry, str]) -> None:
    state, url = registry
    writer = Codec(RegistryFraming(SchemaRegistry(url)))
    values = [writer.encode(record) for record in EXAMPLES]
    reader = Codec(RegistryFraming(SchemaRegistry(url)))
    assert [reader.decode(v) for v in values] == EXAMPLES
    posts = [r for r in state.requests if r.startswith("POST")]
    gets = [r for r in state.requests if r.startswith("GET")]
    assert len(posts) == 1
    assert gets == [f"GET /schemas/ids/{FIRST_ID}"]


def test_older_writer_schema_from_the_registry_reads_into_the_current(
    registry: tuple[_Registry, str],
) -> None:
    state, url = registry
    v1 = shipped_schemas()[0]
    assert v1 is not current_schema()
    schema_id = state.register(json.dumps(v1.source))
    body = io.BytesIO()
    datum = {"site": "s", "kind": "server", "id": "x", "sequence": 1}
    schemaless_writer(body, v1.parsed, {**datum, "observed_at": EXAMPLES[0].observed_at})
    data = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    record = Codec(RegistryFraming(SchemaRegistry(url))).decode(data)
    assert (record.site, record.kind, record.id, record.revision) == ("s", "server", "x", None)


def test_registry_framed_single_object_values_still_decode(
    registry: tuple[_Registry, str],
) -> None:
    _state, url = registry
    data = Codec().encode(EXAMPLES[1])
    assert Codec(RegistryFraming(SchemaRegistry(url))).decode(data) == EXAMPLES[1]


def test_unknown_schema_id_is_a_decode_error(registry: tuple[_Registry, str]) -> None:
    _state, url = registry
    with pytest.raises(DecodeError, match="unknown schema id 999"):
        Codec(RegistryFraming(SchemaRegistry(url))).decode(
            b"\x00" + (999).to_bytes(4, "big") + b"\x02"
        )


def test_a_foreign_schema_is_a_decode_error(registry: tuple[_Registry, str]) -> None:
    state, url = registry
    schema_id = state.register(json.dumps({"type": "record", "name": "Other", "fields": []}))
    with pytest.raises(DecodeError, match="corrupt body"):
        Codec(RegistryFraming(SchemaRegistry(url))).decode(b"\x00" + schema_id.to_bytes(4, "big"))


def test_unreachable_registry_is_a_registry_error_not_a_decode_error() -> None:
    framing = RegistryFraming(
        SchemaRegistry("http://127.0.0.1:9", client_config={"max.retries": 0})
    )
    with pytest.raises(RegistryError, match="cannot register"):
        Codec(framing).encode(EXAMPLES[0])
    with pytest.raises(RegistryError, match=r"127\.0\.0\.1:9"):
        Codec(framing).decode(b"\x00\x00\x00\x00\x01\x02")


def test_a_writer_without_the_timestamp_logical_type_reads_as_the_same_instant(
    registry: tuple[_Registry, str],
) -> None:
    # Logical types are not part of the canonical form, so this writer has the current
    # schema's fingerprint and its longs are read as timestamp-micros.
    state, url = registry
    source = json.loads(json.dumps(current_schema().source))
    next(f for f in source["fields"] if f["name"] == "observed_at")["type"] = "long"
    writer = load_schema(source)
    assert writer.fingerprint == current_schema().fingerprint
    schema_id = state.register(json.dumps(source))
    body = io.BytesIO()
    datum = {"site": "s", "kind": "k", "id": "x", "sequence": 1, "observed_at": 5}
    schemaless_writer(body, writer.parsed, datum)
    data = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    record = Codec(RegistryFraming(SchemaRegistry(url))).decode(data)
    assert record.observed_at == datetime(1970, 1, 1, 0, 0, 0, 5, tzinfo=UTC)
