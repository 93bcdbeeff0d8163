"""The codec: round trips for every kind, single-object layout, evolution, bad input, fuzzing."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import confluent_kafka
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.codecs import codec_from_settings
from connector.config import KafkaSettings
from connector.records.checks import record_problem
from connector.records.codec import SINGLE_OBJECT_MARKER, Codec
from connector.records.errors import DecodeError, EncodeError, WrongSiteError
from connector.records.messages import change_from_message, to_message
from connector.records.model import (
    HEARTBEAT_KIND,
    SEQUENCE_HEADER,
    Deletion,
    StatusRecord,
)
from connector.records.schemas import current_schema, schema_fingerprint, shipped_schemas
from tests.support.records import EXAMPLES, NOW

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.mark.parametrize("record", EXAMPLES, ids=[r.kind for r in EXAMPLES])
def test_round_trip_every_kind(codec: Codec, record: StatusRecord) -> None:
    data = codec.encode(record)
    assert codec.decode(data) == record
    assert codec.decode(data).observed_at.tzinfo is not None


def test_non_utc_times_come_back_as_the_same_instant_in_utc(codec: Codec) -> None:
    plus_two = timezone(timedelta(hours=2))
    record = replace(EXAMPLES[0], observed_at=NOW.astimezone(plus_two))
    decoded = codec.decode(codec.encode(record))
    assert decoded.observed_at == NOW
    assert decoded.observed_at.utcoffset() == timedelta(0)


def test_single_object_layout_is_marker_fingerprint_body(codec: Codec) -> None:
    data = codec.encode(EXAMPLES[0])
    current = current_schema()
    assert data[:2] == SINGLE_OBJECT_MARKER == b"\xc3\x01"
    assert data[2:10] == current.fingerprint
    # Any Avro implementation reads the body with the .avsc file alone.
    schema = parse_schema(json.loads((SCHEMAS / current.file).read_text()))
    body = schemaless_reader(io.BytesIO(data[10:]), schema, None)
    assert isinstance(body, dict)
    assert body["id"] == EXAMPLES[0].id


def test_fingerprint_matches_the_avro_spec() -> None:
    # Avro's own test vector: CRC-64-AVRO of the schema "null" is 7195948357588979594.
    assert schema_fingerprint('"null"') == (7195948357588979594).to_bytes(8, "little")


def test_codec_from_settings_defaults_to_single_object() -> None:
    data = codec_from_settings(KafkaSettings()).encode(EXAMPLES[0])
    assert data.startswith(SINGLE_OBJECT_MARKER)


def _write_with(version: int, datum: dict[str, object]) -> bytes:
    """A value as an older (or any shipped) writer would have produced it."""
    (schema,) = [s for s in shipped_schemas() if s.version == version]
    out = io.BytesIO()
    out.write(SINGLE_OBJECT_MARKER + schema.fingerprint)
    schemaless_writer(out, schema.parsed, datum)
    return out.getvalue()


def test_evolution_v1_record_reads_into_the_current_schema(codec: Codec) -> None:
    assert current_schema().version > 1
    datum = {
        "site": "site-b",
        "kind": "server",
        "id": "abc",
        "sequence": 7,
        "observed_at": NOW,
        "status": "SHUTOFF",
        "name": "db",
        "project_id": None,
        "details": {"vm_state": "stopped"},
        "source_updated_at": NOW,
    }
    decoded = codec.decode(_write_with(1, datum))
    assert decoded == StatusRecord(
        site="site-b",
        kind="server",
        id="abc",
        sequence=7,
        observed_at=NOW,
        status="SHUTOFF",
        name="db",
        details={"vm_state": "stopped"},
        source_updated_at=NOW,
        revision=None,  # added in v2; v1 records read with its default
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty value"),
        (b"{}", "unknown framing"),
        (b"\xc3", "unknown framing"),
        (b"\xc3\x01\x00\x01", "truncated single-object header"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02a", "unknown schema fingerprint 0000000000000000"),
        (b"\x00\x00\x01", "truncated schema registry header"),
        (b"\x00\x00\x00\x00\x07\x02a", r"schema id 7\) but no schema registry is configured"),
    ],
)
def test_bad_framing_is_a_decode_error_naming_the_reason(
    codec: Codec, data: bytes, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason):
        codec.decode(data)


def test_every_truncation_of_a_record_is_a_decode_error(codec: Codec) -> None:
    for record in EXAMPLES:
        data = codec.encode(record)
        for end in range(len(data)):
            with pytest.raises(DecodeError):
                codec.decode(data[:end])


def test_trailing_bytes_are_a_decode_error(codec: Codec) -> None:
    with pytest.raises(DecodeError, match="1 bytes after the end"):
        codec.decode(codec.encode(EXAMPLES[0]) + b"\x00")


def test_a_time_beyond_what_a_datetime_holds_is_a_decode_error(codec: Codec) -> None:
    # The codec turns the microseconds into a datetime itself (not fastavro): a long past year
    # 9999 is as corrupt as bad bytes, and says so.
    current = current_schema()
    datum = {**_avro_datum(EXAMPLES[0]), "observed_at": 2**62}
    out = io.BytesIO()
    out.write(SINGLE_OBJECT_MARKER + current.fingerprint)
    schemaless_writer(out, current.plain, datum)
    with pytest.raises(DecodeError, match="corrupt body: a time out of range"):
        codec.decode(out.getvalue())


def _avro_datum(record: StatusRecord) -> dict[str, object]:
    return {
        "site": record.site,
        "kind": record.kind,
        "id": record.id,
        "sequence": record.sequence,
        "observed_at": 0,
        "status": record.status,
        "name": record.name,
        "project_id": record.project_id,
        "details": dict(record.details),
        "source_updated_at": None,
        "revision": record.revision,
    }


def test_invalid_utf8_is_a_decode_error(codec: Codec) -> None:
    data = codec.encode(replace(EXAMPLES[0], name="\xe9"))
    corrupt = data.replace("\xe9".encode(), b"\xff\xfe")
    with pytest.raises(DecodeError, match="corrupt body"):
        codec.decode(corrupt)


def test_well_formed_avro_breaking_the_record_rules_is_a_decode_error(codec: Codec) -> None:
    datum = {
        "site": "a/b",
        "kind": "server",
        "id": "x",
        "sequence": 1,
        "observed_at": NOW,
    }
    with pytest.raises(DecodeError, match="invalid record: site name 'a/b'"):
        codec.decode(_write_with(current_schema().version, datum))
    with pytest.raises(DecodeError, match="sequence -1"):
        codec.decode(_write_with(current_schema().version, {**datum, "site": "a", "sequence": -1}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"observed_at": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"details": {"big": 2**70}}, "does not fit in 64 bits"),
        ({"details": {"load": float("nan")}}, "not a finite number"),
        ({"details": {"load": float("-inf")}}, "not a finite number"),
        ({"status": "ACTIVE\ud800"}, "surrogate"),
        ({"details": {"pair": ("a", "b")}}, "expected None, bool, int, float, str"),
        ({"details": {"mixed": ["a", 1]}}, "expected None, bool, int, float, str"),
        ({"sequence": -5}, "non-negative"),
        ({"kind": "a/b"}, "kind 'a/b'"),
        ({"id": ""}, "id must be non-empty"),
        ({"site": ""}, "site name ''"),
        ({"kind": HEARTBEAT_KIND, "id": "other-site"}, "a heartbeat's id must be its site"),
    ],
)
def test_encode_refuses_a_record_that_would_come_back_different(
    codec: Codec, change: dict[str, object], reason: str
) -> None:
    with pytest.raises(EncodeError, match=reason):
        codec.encode(replace(EXAMPLES[0], **change))  # type: ignore[arg-type]


# --- messages: key, value and the sequence header together --------------------------------


def _message(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
) -> confluent_kafka.Message:
    return confluent_kafka.Message(
        topic="cascade.status.site-a",
        partition=0,
        offset=5,
        key=key,
        value=value,
        headers=None if headers is None else [(name, raw) for name, raw in headers],
    )


def test_record_message_round_trip(codec: Codec) -> None:
    for record in EXAMPLES:
        msg = to_message(record, codec)
        assert msg.key == record.key.encode()
        assert change_from_message(_message(msg.key, msg.value, msg.headers), codec) == record


def test_tombstone_carries_the_sequence_header(codec: Codec) -> None:
    deletion = Deletion("site-a", "port", "p/with/slashes", 99)
    msg = to_message(deletion, codec)
    assert msg.value is None
    assert msg.headers == [(SEQUENCE_HEADER, b"99")]
    assert change_from_message(_message(msg.key, None, msg.headers), codec) == deletion


def test_tombstone_without_sequence_header(codec: Codec) -> None:
    change = change_from_message(_message(b"site-a/server/x", None), codec)
    assert change == Deletion("site-a", "server", "x", None)


@pytest.mark.parametrize(
    ("key", "value", "headers", "reason"),
    [
        (None, None, None, "no key"),
        (b"\xff\xfe", None, None, "bad key"),
        (b"only-one-part", None, None, "bad key"),
        (b"site-a/server/x", None, [(SEQUENCE_HEADER, b"12x")], "not a decimal"),
        (b"site-a/server/x", None, [(SEQUENCE_HEADER, "\u0663".encode())], "not a decimal"),
        (b"site-a/server/x", b"garbage", None, "unknown framing"),
        # Past Python's 4,300 digits int() raises a ValueError of its own, which ended the
        # consumer before every failure became a DecodeError.
        (b"site-a/server/x", None, [(SEQUENCE_HEADER, b"9" * 5000)], "unreadable message"),
    ],
)
def test_bad_messages_are_decode_errors(
    codec: Codec,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    reason: str,
) -> None:
    with pytest.raises(DecodeError, match=reason):
        change_from_message(_message(key, value, headers), codec)


def test_a_value_that_disagrees_with_its_key_is_a_decode_error(codec: Codec) -> None:
    value = codec.encode(EXAMPLES[0])
    other_key = b"site-a/server/someone-else"
    with pytest.raises(DecodeError, match="disagrees"):
        change_from_message(_message(other_key, value), codec)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # A status record, a tombstone and a heartbeat about site-b, read from site-a's topic.
        (b"site-b/server/x", "record"),
        (b"site-b/server/x", None),
        (b"site-b/site/site-b", "heartbeat"),
        # A heartbeat (or its tombstone) of site-a's key naming site-b as the site it is.
        (b"site-a/site/site-b", None),
    ],
)
def test_a_message_about_another_site_is_a_wrong_site_error(
    codec: Codec, key: bytes, value: str | None
) -> None:
    site = key.decode().split("/")[0]
    records = {
        "record": replace(EXAMPLES[0], site=site, id="x"),
        "heartbeat": StatusRecord(site, HEARTBEAT_KIND, site, "ok", 7, NOW),
    }
    encoded = None if value is None else codec.encode(records[value])
    with pytest.raises(WrongSiteError, match="site-b") as caught:
        change_from_message(_message(key, encoded), codec, site="site-a")
    assert caught.value.category == "wrong site"
    # Without a site to check against (tail, a site's restore), the same message reads.
    if key != b"site-a/site/site-b":
        assert change_from_message(_message(key, encoded), codec).site == "site-b"


def test_a_message_about_its_own_site_reads(codec: Codec) -> None:
    record = replace(EXAMPLES[0], site="site-a")
    beat = StatusRecord("site-a", HEARTBEAT_KIND, "site-a", "ok", 7, NOW)
    for change in (record, beat):
        msg = to_message(change, codec)
        assert change_from_message(_message(msg.key, msg.value), codec, site="site-a") == change


# --- fuzzing -------------------------------------------------------------------------------

_text = st.text(max_size=20)
_names = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
_times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
_detail = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
    st.lists(_text, max_size=4),
)
_records = st.builds(
    StatusRecord,
    site=_names,
    kind=_names,
    id=st.text(min_size=1, max_size=40),
    status=st.none() | _text,
    sequence=st.integers(min_value=0, max_value=2**63 - 1),
    observed_at=_times,
    name=st.none() | _text,
    project_id=st.none() | _text,
    details=st.dictionaries(_text, _detail, max_size=6),
    source_updated_at=st.none() | _times,
    revision=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(record=_records)
def test_fuzz_round_trip(record: StatusRecord) -> None:
    codec = Codec()
    assert codec.decode(codec.encode(record)) == record


def _decodes_or_refuses(codec: Codec, data: bytes) -> None:
    """The decoder's contract: a valid record, or DecodeError; never anything else."""
    try:
        record = codec.decode(data)
    except DecodeError as exc:
        assert exc.reason
    else:
        assert record_problem(record) is None


_headers = st.lists(
    st.tuples(st.sampled_from([SEQUENCE_HEADER, "other"]), st.none() | st.binary(max_size=30)),
    max_size=3,
)


@_fuzz
@given(
    key=st.none() | st.binary(max_size=40) | st.sampled_from([b"site-a/server/x", b"a/b/c"]),
    value=st.none() | st.binary(max_size=60),
    headers=st.none() | _headers,
)
def test_fuzz_arbitrary_messages_read_or_are_decode_errors(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]] | None
) -> None:
    message = _message(key, value, headers)  # type: ignore[arg-type]
    try:
        change = change_from_message(message, Codec(), site="site-a")
    except DecodeError as exc:
        assert exc.reason
    else:
        assert change.site == "site-a"


@_fuzz
@given(data=st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decodes_or_refuses(Codec(), data)


@_fuzz
@given(
    version=st.sampled_from([s.version for s in shipped_schemas()]),
    body=st.binary(max_size=200),
)
def test_fuzz_arbitrary_body_behind_a_known_fingerprint(version: int, body: bytes) -> None:
    (schema,) = [s for s in shipped_schemas() if s.version == version]
    _decodes_or_refuses(Codec(), SINGLE_OBJECT_MARKER + schema.fingerprint + body)


@_fuzz
@given(record=_records, data=st.data())
def test_fuzz_mutated_records(record: StatusRecord, data: st.DataObject) -> None:
    codec = Codec()
    encoded = bytearray(codec.encode(record))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        encoded[at] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    _decodes_or_refuses(codec, bytes(encoded[:cut]))
