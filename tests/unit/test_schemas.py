"""The shipped schemas: their rules, their fingerprints, the compatibility check, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from connector.cli import cli
from connector.records.schemas import (
    check_shipped,
    current_schema,
    lint_schema,
    load_schema,
    read_problems,
    shipped_schemas,
)

#: A shipped version never changes (every version is kept as written, readers find it by this
#: fingerprint); a new version is a new file.
PINNED_FINGERPRINTS = {1: "4f126e0fde79be4c", 2: "0c3019bf781543e9"}


def test_top_level_schemas_dir_is_what_the_package_ships() -> None:
    top = Path(__file__).resolve().parents[2] / "schemas"
    assert sorted(p.name for p in top.glob("*.avsc")) == [s.file for s in shipped_schemas()]


def test_every_shipped_version_is_kept_unchanged() -> None:
    found = {s.version: s.fingerprint_hex for s in shipped_schemas()}
    assert found == PINNED_FINGERPRINTS


def test_shipped_schemas_keep_the_evolution_rules() -> None:
    for schema in shipped_schemas():
        assert lint_schema(schema.source) == [], schema.file
        assert schema.source["namespace"] == "cascade.connector"
        kind = next(f for f in schema.source["fields"] if f["name"] == "kind")
        assert kind["type"] == "string"  # a new kind must not break an old reader
    assert check_shipped() == []


def test_current_schema_has_the_fields_of_the_brief() -> None:
    fields = {f["name"] for f in current_schema().source["fields"]}
    assert fields == {
        "site",
        "kind",
        "id",
        "name",
        "project_id",
        "status",
        "details",
        "source_updated_at",
        "observed_at",
        "revision",
        "sequence",
    }


def _current_with(change: Any) -> dict[str, Any]:
    source = copy.deepcopy(current_schema().source)
    change(source)
    return load_schema(source).parsed


def _field(source: dict[str, Any], name: str) -> dict[str, Any]:
    field: dict[str, Any] = next(f for f in source["fields"] if f["name"] == name)
    return field


def test_a_new_field_without_default_cannot_read_old_data() -> None:
    reader = _current_with(lambda s: s["fields"].append({"name": "zone", "type": "string"}))
    assert read_problems(current_schema().parsed, reader) == [
        "zone: missing in the writer and has no default"
    ]


def test_a_new_field_with_default_can() -> None:
    reader = _current_with(
        lambda s: s["fields"].append({"name": "zone", "type": "string", "default": ""})
    )
    assert read_problems(current_schema().parsed, reader) == []


def test_narrowing_a_type_is_caught_and_promotion_is_allowed() -> None:
    def sequence_as(kind: str) -> Any:
        return lambda s: _field(s, "sequence").__setitem__("type", kind)

    writer = current_schema().parsed
    assert read_problems(writer, _current_with(sequence_as("int"))) == [
        "sequence: writer type long cannot be read as int"
    ]
    assert read_problems(writer, _current_with(sequence_as("double"))) == []


def test_dropping_a_union_branch_is_caught() -> None:
    def no_lists(source: dict[str, Any]) -> None:
        _field(source, "details")["type"]["values"].pop()

    problems = read_problems(current_schema().parsed, _current_with(no_lists))
    assert problems == ["details{}: writer type array matches no branch of the reader's union"]


def test_enum_rules() -> None:
    def enum(symbols: list[str], default: str | None = None) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "enum", "name": "Kind", "symbols": symbols}
        if default:
            schema["default"] = default
        return schema

    assert read_problems(enum(["a", "b"]), enum(["a"])) == [
        "record: reader enum lacks symbols ['b'] and has no default"
    ]
    assert read_problems(enum(["a", "b"]), enum(["a", "z"], default="z")) == []


def test_optional_field_without_default_is_linted() -> None:
    source = copy.deepcopy(current_schema().source)
    del _field(source, "status")["default"]
    assert lint_schema(source) == ["optional field 'status' has no default"]


def test_cli_schemas_show_prints_every_version_with_fingerprint() -> None:
    result = CliRunner().invoke(cli, ["schemas", "show"])
    assert result.exit_code == 0, result.output
    for version, fingerprint in PINNED_FINGERPRINTS.items():
        assert f"status-v{version}.avsc" in result.output
        assert fingerprint in result.output
    assert "(current)" in result.output
    first = result.output.split("\n", 1)[1].split("\n# ", 1)[0]
    assert json.loads(first)["name"] == "StatusRecord"


def test_cli_schemas_check() -> None:
    result = CliRunner().invoke(cli, ["schemas", "check"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: the current schema reads status-v1.avsc, status-v2.avsc")
