"""Sink calls end in time and survive rows the database refuses: against real PostgreSQL and
SQLite, and the HTTP sink against a real loopback server.

- a batch the database refuses for a few rows (a CHECK constraint, a trigger) is bisected: the
  refused changes come back rejected with the database's reason, the rest is applied;
- PostgreSQL's statement_timeout and lock_timeout, and the whole call's budget, turn a slow or
  blocked apply into backpressure, and so does `interrupt()`;
- the HTTP sink's retries keep within the budget and stop when interrupted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks.base import SinkBackpressureError
from connector.sinks.http import HttpSink
from connector.sinks.sql import SqlSink, sqlalchemy_url

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(object_id: str, sequence: int, status: str = "ACTIVE") -> StatusRecord:
    return StatusRecord("a", "server", object_id, status, sequence, T0 + timedelta(seconds=1))


def refuse_poison(sink: SqlSink) -> None:
    """Make the database refuse every row whose status is POISON: a CHECK constraint on
    PostgreSQL, a trigger on SQLite (which cannot add a constraint to a table)."""
    with sink.engine.begin() as conn:
        if sink.engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "ALTER TABLE resource_status ADD CONSTRAINT no_poison "
                    "CHECK (status IS DISTINCT FROM 'POISON')"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER no_poison BEFORE INSERT ON resource_status "
                    "WHEN NEW.status = 'POISON' BEGIN SELECT RAISE(ABORT, 'no_poison'); END"
                )
            )


def test_refused_rows_are_isolated_and_the_rest_applied(sql_url: str) -> None:
    sink = SqlSink(sql_url)
    try:
        refuse_poison(sink)
        poisoned = {"vm-7", "vm-100", "vm-101"}
        batch: list[Change] = [
            rec(f"vm-{i}", i + 1, "POISON" if f"vm-{i}" in poisoned else "ACTIVE")
            for i in range(300)
        ]
        batch.append(Deletion("a", "server", "gone", 5))
        result = sink.apply(batch)
        assert {c.id for c, _ in result.rejected} == poisoned
        assert all("no_poison" in reason for _, reason in result.rejected)
        assert result.written == 301 - len(poisoned)
        with sink.engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT id FROM resource_status")).scalars())
        assert stored == {f"vm-{i}" for i in range(300)} - poisoned | {"gone"}
    finally:
        sink.close()


def test_a_trigger_raising_an_exception_is_isolated_too(postgres_database: str) -> None:
    sink = SqlSink(postgres_database)
    try:
        with sink.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.id = 'vm-3' THEN RAISE EXCEPTION 'vm-3 is not welcome'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON resource_status "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
        result = sink.apply([rec(f"vm-{i}", 1) for i in range(10)])
        assert [(c.id, reason) for c, reason in result.rejected] == [
            ("vm-3", "refused by the database: vm-3 is not welcome")
        ]
        assert result.written == 9
    finally:
        sink.close()


@pytest.fixture
def slow_inserts(postgres_database: str) -> str:
    """A database whose every insert into resource_status sleeps 5 s (a trigger)."""
    engine = sa.create_engine(sqlalchemy_url(postgres_database))
    SqlSink(postgres_database).close()  # the tables
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION slow() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(5); "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER slow BEFORE INSERT ON resource_status "
                "FOR EACH ROW EXECUTE FUNCTION slow()"
            )
        )
    engine.dispose()
    return postgres_database


def test_statement_timeout_turns_a_slow_apply_into_backpressure(slow_inserts: str) -> None:
    sink = SqlSink(slow_inserts, statement_timeout=0.3, retry_after=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(SinkBackpressureError, match="statement timeout") as info:
            sink.apply([rec("vm1", 1)])
        assert time.monotonic() - started < 3.0
        assert info.value.retry_after == 1.5
    finally:
        sink.close()


def test_the_apply_budget_bounds_every_statement(slow_inserts: str) -> None:
    sink = SqlSink(slow_inserts, statement_timeout=60, apply_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(SinkBackpressureError):
            sink.apply([rec("vm1", 1)])
        assert time.monotonic() - started < 3.0
    finally:
        sink.close()


def test_lock_timeout_setting_turns_a_lock_wait_into_backpressure(postgres_database: str) -> None:
    sink = SqlSink(postgres_database, lock_timeout=0.2)
    holder = sa.create_engine(sqlalchemy_url(postgres_database))
    try:
        with holder.begin() as conn:
            conn.execute(sa.text("LOCK TABLE resource_status IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(SinkBackpressureError, match="lock timeout"):
                sink.apply([rec("vm1", 1)])
            assert time.monotonic() - started < 3.0
    finally:
        holder.dispose()
        sink.close()


def test_an_interrupted_sql_sink_applies_nothing(sql_url: str) -> None:
    sink = SqlSink(sql_url)
    try:
        sink.interrupt()
        with pytest.raises(SinkBackpressureError, match="interrupted"):
            sink.apply([rec("vm1", 1)])
        with sink.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM resource_status")).scalar() == 0
    finally:
        sink.close()


@pytest.fixture
def failing_service() -> Iterator[str]:
    """A loopback top-layer service that answers every POST with HTTP 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/batches"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_http_retries_keep_within_the_budget(failing_service: str) -> None:
    sink = HttpSink(failing_service, retries=10, backoff=2.0, apply_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SinkBackpressureError):
        sink.apply([rec("vm1", 1)])
    assert time.monotonic() - started < 2.5
    sink.close()


def test_interrupt_ends_an_http_retry_backoff(failing_service: str) -> None:
    sink = HttpSink(failing_service, retries=10, backoff=30.0, apply_timeout=300)
    threading.Timer(0.5, sink.interrupt).start()
    started = time.monotonic()
    with pytest.raises(SinkBackpressureError, match="interrupted"):
        sink.apply([rec("vm1", 1)])
    assert time.monotonic() - started < 3.0
    sink.close()
