"""Sink parts that need no database or server: settings, the factory, the HTTP sink's pure parts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from connector.config import load_settings
from connector.errors import ConfigError
from connector.records.model import Deletion, StatusRecord
from connector.sinks import open_sink
from connector.sinks.base import SinkBackpressureError, SinkError
from connector.sinks.http import HttpSink, change_json, idempotency_key, parse_retry_after
from connector.sinks.sql import SqlSink, create_engine, sqlalchemy_url, translate_errors

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_sink_settings_defaults_and_environment() -> None:
    sink = load_settings(env={}).sink
    assert (sink.url, sink.on_delete) == ("sqlite:///cascade-status.sqlite", "mark")
    env = {"CASCADE_SINK_URL": "https://top.example/batches", "CASCADE_SINK_ON_DELETE": "delete"}
    sink = load_settings(env=env).sink
    assert (sink.url, sink.on_delete) == ("https://top.example/batches", "delete")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CASCADE_SINK_URL": "mysql://db/x"}, "sink.url: expected a URL starting with one of"),
        ({"CASCADE_SINK_ON_DELETE": "purge"}, "sink.on_delete: input should be 'delete' or 'mark'"),
        ({"CASCADE_SINK_TIMEOUT": "0"}, "sink.timeout: input should be greater than 0"),
    ],
)
def test_sink_settings_errors_name_the_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_open_sink_chooses_by_scheme(tmp_path: Path) -> None:
    sql = open_sink(f"sqlite:///{tmp_path / 'x.sqlite'}")
    assert isinstance(sql, SqlSink) and sql.on_delete == "mark"
    sql.close()
    with pytest.raises(ConfigError, match="sink URL: expected a URL"):
        open_sink("ftp://top/")


def test_open_sink_names_a_sqlite_file_it_cannot_create(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="cannot create the sink tables"):
        open_sink(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite'}")


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    assert sqlalchemy_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert sqlalchemy_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 5.0),
        ("12", 12.0),
        # Taken at its word, 0 (or a date already past) made a tight retry loop: a floor of 1 s.
        ("0", 1.0),
        ("0.5", 1.0),
        ("Wed, 01 Jan 2025 00:01:00 GMT", 60.0),
        ("Tue, 31 Dec 2024 23:00:00 GMT", 1.0),
        ("86400", 600.0),
        ("soon", 5.0),
        ("-3", 5.0),
    ],
)
def test_retry_after_seconds_or_http_date(header: str | None, expected: float) -> None:
    assert parse_retry_after(header, default=5.0, now=T0) == expected


def test_idempotency_key_depends_on_content_not_order() -> None:
    a = change_json(StatusRecord("s", "server", "1", "ACTIVE", 3, T0))
    b = change_json(Deletion("s", "server", "2", 4))
    assert idempotency_key([a, b]) == idempotency_key([b, a])
    assert idempotency_key([a, b]) != idempotency_key([a])
    newer = change_json(StatusRecord("s", "server", "1", "ACTIVE", 5, T0))
    assert idempotency_key([a, b]) != idempotency_key([newer, b])


def test_a_long_retry_after_is_capped() -> None:
    from connector.sinks.http import MAX_RETRY_AFTER

    assert parse_retry_after("99999999", 5.0) == MAX_RETRY_AFTER


def test_credentials_stay_out_of_messages() -> None:
    sink = HttpSink("https://user:secret@top.example:8443/batches")
    assert "secret" not in repr(sink) and "top.example:8443" in repr(sink)


@pytest.mark.parametrize(
    "url, message",
    [
        ("sqlite://", "sqlite:///PATH to a file"),
        ("https://", "expected a host"),
        ("http:foo", "expected a URL starting with"),
    ],
)
def test_unusable_sink_urls_are_refused_up_front(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, {"CASCADE_SINK_URL": url})


def test_infinite_timeouts_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"sink\.timeout: input should be a finite number"):
        load_settings(None, {"CASCADE_SINK_TIMEOUT": "inf"})


def test_backpressure_is_not_a_sink_error() -> None:
    """Code that gives up on a SinkError (retrying will not fix it) must let a sink that only
    asked to wait through to the consumer, which retries the batch."""
    outcome = ""
    try:
        try:
            raise SinkBackpressureError("top layer busy", retry_after=2.0)
        except SinkError:
            outcome = "gave up"
    except SinkBackpressureError as exc:
        outcome = f"retry after {exc.retry_after:g} s"
    assert outcome == "retry after 2 s"


@pytest.mark.parametrize(
    "message",
    [
        "consuming input failed: SSL SYSCALL error: EOF detected",
        "SSL connection has been closed unexpectedly",
        "server closed the connection unexpectedly",
    ],
)
def test_a_postgresql_connection_lost_is_backpressure(message: str) -> None:
    # What psycopg raises when the server (or a TLS proxy before it) drops the connection under
    # a statement: an OperationalError without a SQLSTATE.
    lost = sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(message))
    with (
        pytest.raises(SinkBackpressureError, match=message),
        translate_errors("SQL sink apply failed", retry_after=1.0),
    ):
        raise lost


def test_a_wrong_tls_setup_stays_a_sink_error() -> None:
    refused = sa.exc.OperationalError(
        "connect", {}, psycopg.OperationalError("server does not support SSL, but SSL was required")
    )
    with (
        pytest.raises(SinkError, match="does not support SSL"),
        translate_errors("cannot create the sink tables", retry_after=1.0),
    ):
        raise refused


class Connecting(Exception):
    """Raised instead of connecting, once the connection's parameters are known."""


@pytest.mark.parametrize(("query", "timeout"), [("", 10), ("?connect_timeout=3", "3")])
def test_postgresql_connections_get_a_connect_timeout_and_keepalives(
    query: str, timeout: object
) -> None:
    engine = create_engine(f"postgresql://user@127.0.0.1:1/db{query}")
    seen: dict[str, Any] = {}

    def capture(_d: object, _r: object, _a: object, params: dict[str, Any]) -> None:
        seen.update(params)
        raise Connecting

    sa.event.listen(engine, "do_connect", capture)
    with pytest.raises(Connecting):
        engine.connect()
    assert seen["connect_timeout"] == timeout, "the URL's own setting wins"
    assert {k: seen[k] for k in ("keepalives", "keepalives_idle")} == {
        "keepalives": 1,
        "keepalives_idle": 30,
    }
    assert seen["keepalives_interval"] * seen["keepalives_count"] <= 60
