"""The SQL sink: applies batches to SQLite or PostgreSQL through SQLAlchemy Core, never regressing.

It owns the tables (created if missing): `resource_status`, one row per object keyed by
(site, kind, id), `site_heartbeat`, one row per site, and `consumer_offsets`, the next offset to
read of each partition per consumer group, written in the transaction of the batch it follows
(the availability table and the view a top-layer reader queries are in `sql_availability`). A
batch is one transaction. Its status
records go in one set-based step without SQLAlchemy's per-row parameter processing: on
PostgreSQL a binary COPY into a temporary staging table and one INSERT ... SELECT ... ON
CONFLICT; on SQLite one prepared upsert stepped by sqlite3's executemany over plain tuples.
Heartbeats and deletions are one statement each (executemany). Each statement is bounded in
time (PostgreSQL's statement_timeout and lock_timeout, within the apply's whole budget).
A row changes only when the change carries a higher site sequence than the row and shows
different content (status, name, project, details, deleted), so a replay after a crash, or a
change back to what the row holds, writes nothing. Changes that can never be stored (too long,
NUL characters, non-JSON details) are rejected up front with a reason; changes the database
refuses anyway (a constraint, a trigger) are isolated by bisecting the batch and rejected with
the database's reason; transient database trouble, and an apply over its time budget, become
SinkBackpressureError.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from connector.records.model import (
    HEARTBEAT_KIND,
    Change,
    Deletion,
    DetailValue,
    StatusRecord,
)
from connector.redact import redact_text
from connector.sinks.base import (
    ApplyResult,
    Progress,
    SinkBackpressureError,
    SinkError,
    SiteAvailability,
    SitePartition,
)
from connector.sinks.sql_availability import (
    availability_rows,
    availability_upsert,
    create_availability_schema,
)

OnDelete = Literal["delete", "mark"]

log = logging.getLogger(__name__)

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_UTC_TIME = sa.DateTime(timezone=True)

metadata = sa.MetaData()

#: One row per object. `sequence` is the site sequence of the change the row holds; it is NULL only
#: for a row marked deleted by a tombstone that came without one.
resource_status = sa.Table(
    "resource_status",
    metadata,
    sa.Column("site", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255)),
    sa.Column("project_id", sa.String(255)),
    sa.Column("status", sa.String(64)),
    sa.Column("details", _JSON),
    sa.Column("source_updated_at", _UTC_TIME),
    sa.Column("observed_at", _UTC_TIME),
    sa.Column("revision", sa.BigInteger),
    sa.Column("sequence", sa.BigInteger),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    #: when this sink last changed the row (the top layer's clock)
    sa.Column("applied_at", _UTC_TIME, nullable=False),
)

#: One row per site: its latest heartbeat.
site_heartbeat = sa.Table(
    "site_heartbeat",
    metadata,
    sa.Column("site", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(64)),
    sa.Column("details", _JSON),
    sa.Column("observed_at", _UTC_TIME, nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("applied_at", _UTC_TIME, nullable=False),
)

#: Per consumer group and partition of a site topic, the next offset to read: every change before
#: it is applied (written in the same transaction), so reading resumes here, whatever Kafka holds
#: as the group's committed offset (a database restored from a backup replays what it lost).
consumer_offsets = sa.Table(
    "consumer_offsets",
    metadata,
    sa.Column("consumer_group", sa.String(255), primary_key=True),
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    #: when this sink stored it (the top layer's clock)
    sa.Column("stored_at", _UTC_TIME, nullable=False),
)

_KEY = ("site", "kind", "id")
#: The columns of a status row, in the order of the tuples `_plan` builds.
STATUS_COLUMNS = tuple(c.name for c in resource_status.c)


def _copy_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type binary COPY writes `column` as; details go as JSON text (checked and
    serialised once, in `_plan`) and are cast to JSONB by the merge."""
    if column.name == "details" or isinstance(column.type, sa.String):
        return "text"
    return {sa.DateTime: "timestamptz", sa.BigInteger: "int8", sa.Boolean: "bool"}[
        type(column.type)
    ]


_COPY_TYPES = [_copy_type(c) for c in resource_status.c]
#: The staging table of a PostgreSQL connection, made when the connection opens; COMMIT empties
#: it and a rollback drops what the failed transaction put there, so each apply starts empty.
_STAGE = sa.table("resource_status_stage", *(sa.column(name) for name in STATUS_COLUMNS))
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE {_STAGE.name} ("
    + ", ".join(f"{name} {t}" for name, t in zip(STATUS_COLUMNS, _COPY_TYPES, strict=True))
    + ") ON COMMIT DELETE ROWS"
)
_COPY_STAGE = f"COPY {_STAGE.name} ({', '.join(STATUS_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
#: SQLite's table of a batch's keys and sequences, for counting the stale records (`_SEQUENCES`)
_SEQUENCES = "resource_status_sequences"
_CREATE_SEQUENCES = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_SEQUENCES} (site, kind, id, sequence INTEGER)"
)
_SEQUENCE = STATUS_COLUMNS.index("sequence")
_BIGINT = range(-(2**63), 2**63)
#: PostgreSQL SQLSTATEs worth a retry: connection exceptions (08), transaction rollbacks such as
#: serialization failures and deadlocks (40), insufficient resources (53), operator intervention
#: such as shutdown or a cancelled statement (57), lock not available (55P03).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
_TRANSIENT_SQLSTATES = ("55P03",)
#: ...except these, which no retry fixes: the database was dropped, a configured limit was hit.
_PERMANENT_SQLSTATES = ("57P04", "53400")
#: A connection lost under a statement has no SQLSTATE either; these messages (from libpq) say
#: the connection broke (through TLS, libpq reports an EOF in SSL terms), which a new one fixes.
_LOST_CONNECTION_ERRORS = (
    "SSL SYSCALL error",
    "EOF detected",
    "SSL connection has been closed unexpectedly",
)
#: A connection that fails before the server says anything has no SQLSTATE; these messages (from
#: libpq) mean a wrong login or database, which no retry fixes either.
_PERMANENT_CONNECT_ERRORS = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "authentication failed",
    "SSL",
)


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy gets: plain `postgresql://` is mapped to the psycopg 3 driver."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def create_engine(url: str) -> sa.Engine:
    """An engine for `url`; SQLite files get WAL, so `status` can read while the consumer writes.

    A locked SQLite file is waited for `?timeout=` seconds (the driver's default is 5) before the
    apply fails with backpressure; PostgreSQL takes libpq options such as `?options=-c%20...`,
    and gets POSTGRESQL_DEFAULTS (connect timeout, TCP keepalives) where the URL sets none.
    """
    try:
        engine = sa.create_engine(sqlalchemy_url(url), pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
        raise SinkError(redact_text(f"unusable SQL sink URL {url!r}: {exc}")) from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "do_connect", _postgresql_defaults)
    else:
        raise SinkError(f"SQL sink supports SQLite and PostgreSQL, not {engine.dialect.name}")
    return engine


#: libpq settings of every PostgreSQL connection, unless its URL sets them (`?connect_timeout=`):
#: a server that does not answer fails a connect in 10 s (backpressure, retried) rather than
#: libpq's never; TCP keepalives notice a peer gone without a word (a host down, a firewall
#: dropping the connection) within about a minute, not the kernel's two hours, during which a
#: statement waited on it.
POSTGRESQL_DEFAULTS: Mapping[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _postgresql_defaults(
    _dialect: object, _record: ConnectionPoolEntry, _args: list[Any], params: dict[str, Any]
) -> None:
    for name, value in POSTGRESQL_DEFAULTS.items():
        params.setdefault(name, value)


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


@contextmanager
def translate_errors(what: str, retry_after: float) -> Iterator[None]:
    """Turn SQLAlchemy errors into SinkBackpressureError (transient) or SinkError (the rest)."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        message = f"{what}: {_first_line(exc)}"
        if _is_transient(exc):
            raise SinkBackpressureError(message, retry_after) from exc
        raise SinkError(message) from exc


def _first_line(exc: sa.exc.SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_transient(exc: sa.exc.SQLAlchemyError) -> bool:
    if isinstance(exc, sa.exc.TimeoutError):
        return True  # no pooled connection came free in time
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if sqlite_name is not None:
        return str(sqlite_name).startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    if hasattr(orig, "sqlstate"):
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate is None:
            # psycopg raises OperationalError without a SQLSTATE when it cannot reach the server
            # or lost it: worth a retry, unless libpq says the login or the database is wrong.
            text = str(orig)
            if not isinstance(exc, sa.exc.OperationalError):
                return False
            if any(reason in text for reason in _LOST_CONNECTION_ERRORS):
                return True
            return not any(reason in text for reason in _PERMANENT_CONNECT_ERRORS)
        if sqlstate in _PERMANENT_SQLSTATES:
            return False
        return str(sqlstate).startswith(_TRANSIENT_SQLSTATE_CLASSES) or (
            sqlstate in _TRANSIENT_SQLSTATES
        )
    return False


#: SET LOCAL for both timeouts, with bound values (SET itself takes no parameters).
_SET_TIMEOUTS = sa.text(
    "SELECT set_config('statement_timeout', :statement, true), "
    "set_config('lock_timeout', :lock, true)"
)


class _RowsRefused(Exception):
    """The database refused a transaction for what some of its rows hold (bisect to find them)."""


def _refuses_rows(exc: BaseException | None) -> bool:
    """True for errors about a row's content rather than the database: integrity (constraints,
    a trigger's RAISE(ABORT) on SQLite), data exceptions (SQLSTATE 22, 23) and PL/pgSQL errors
    a trigger raises (P0)."""
    if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError):
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(("22", "23", "P0"))


@dataclass
class _Plan:
    """A batch sorted by statement, with the changes refused up front."""

    storable: list[Change] = field(default_factory=list)
    #: rows in STATUS_COLUMNS order, details as JSON text, times as the dialect stores them
    statuses: list[tuple[Any, ...]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[dict[str, Any]] = field(default_factory=list)
    heartbeat_deletions: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[Change, str]] = field(default_factory=list)


class SqlSink:
    """A Sink over SQLite or PostgreSQL. See the module docstring for the rules it keeps."""

    def __init__(
        self,
        url: str,
        *,
        on_delete: OnDelete = "mark",
        retry_after: float = 5.0,
        apply_timeout: float = 120.0,
        statement_timeout: float = 30.0,
        lock_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.on_delete = on_delete
        self.retry_after = retry_after
        #: seconds one `apply` may take in all, bisection included (then: backpressure)
        self.apply_timeout = apply_timeout
        #: PostgreSQL: seconds one statement may run, and wait for a lock
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self._interrupted = threading.Event()
        self.engine = create_engine(url)
        if self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "connect", _create_stage)
        try:
            with translate_errors("cannot create the sink tables", retry_after):
                _create_tables(self.engine)
        except (SinkError, SinkBackpressureError):
            self.engine.dispose()
            raise
        self._statements = _Statements(self.engine.dialect)

    def __repr__(self) -> str:
        return (
            f"SqlSink({self.engine.url.render_as_string(hide_password=True)!r}, "
            f"on_delete={self.on_delete!r})"
        )

    def apply(self, changes: Sequence[Change], progress: Progress | None = None) -> ApplyResult:
        """Apply `changes` (distinct keys) in one transaction; return the rows actually changed.
        `progress` goes into `consumer_offsets` in the same transaction, unless a change is
        rejected (its dead letter must be delivered before reading moves past it: the consumer
        stores the offsets on their own then).

        When the database refuses the transaction for what some rows hold (a constraint or a
        trigger the up-front checks do not know), the batch is bisected, each half in its own
        transaction, until the refused changes are isolated: they come back as rejected, with
        the database's reason, and the rest is applied. The whole call, bisection included,
        keeps within `apply_timeout`; past it, or when interrupted, it raises backpressure.
        """
        _require_distinct_keys(changes)
        applied_at = datetime.now(UTC)
        plan = _plan(changes, applied_at, self._statements.time)
        deadline = time.monotonic() + self.apply_timeout
        store = progress if not plan.rejected else None
        try:
            written, stale = self._transaction(plan, deadline, store)
            refused: list[tuple[Change, str]] = []
        except _RowsRefused as exc:
            log.warning(
                "the database refused a batch of %d changes (%s); bisecting to isolate them",
                len(plan.storable),
                exc,
            )
            written, stale, refused = self._bisect(plan.storable, applied_at, deadline)
            store = None
        return ApplyResult(
            written=written,
            rejected=plan.rejected + refused,
            progress_stored=store is not None,
            stale=stale,
        )

    def stored_offsets(
        self, group: str, partitions: Collection[SitePartition]
    ) -> dict[SitePartition, int]:
        """The next offsets `consumer_offsets` holds for `group`, of the `partitions` it knows."""
        co = consumer_offsets
        wanted = set(partitions)
        topics = sorted({topic for topic, _p in wanted})
        query = sa.select(co.c.topic, co.c.partition, co.c.next_offset).where(
            co.c.consumer_group == group, co.c.topic.in_(topics)
        )
        with (
            translate_errors("cannot read the stored offsets", self.retry_after),
            self.engine.connect() as conn,
        ):
            rows = conn.execute(query).all()
        return {(t, p): int(o) for t, p, o in rows if (t, p) in wanted}

    def set_availability(self, states: Sequence[SiteAvailability]) -> None:
        """Write sites' availability (connector/sinks/sql_availability.py), in one transaction."""
        rows = availability_rows(list(states))
        with (
            translate_errors("SQL sink availability write failed", self.retry_after),
            self.engine.begin() as conn,
        ):
            conn.execute(availability_upsert(self.engine.dialect.name), rows)

    def interrupt(self) -> None:
        """Make the running (or next) apply give up at its next statement: the consumer stops."""
        self._interrupted.set()

    def _bisect(
        self, changes: Sequence[Change], applied_at: datetime, deadline: float
    ) -> tuple[int, int, list[tuple[Change, str]]]:
        """Apply `changes` in halves until each refused change stands alone: (rows written,
        stale records, refused changes)."""
        if len(changes) == 1:
            try:
                plan = _plan(changes, applied_at, self._statements.time)
                return *self._transaction(plan, deadline, None), []
            except _RowsRefused as exc:
                return 0, 0, [(changes[0], f"refused by the database: {exc}")]
        written, stale, refused = 0, 0, []
        middle = len(changes) // 2
        for half in (changes[:middle], changes[middle:]):
            try:
                plan = _plan(half, applied_at, self._statements.time)
                more, older = self._transaction(plan, deadline, None)
                why: list[tuple[Change, str]] = []
            except _RowsRefused:
                more, older, why = self._bisect(half, applied_at, deadline)
            written += more
            stale += older
            refused += why
        return written, stale, refused

    def _transaction(
        self, plan: _Plan, deadline: float, progress: Progress | None
    ) -> tuple[int, int]:
        """Apply `plan` and store `progress` in one transaction; return the rows changed and the
        stale status records (see `_upsert_statuses`). Raises _RowsRefused when the database
        refuses what a row holds, SinkBackpressureError when over budget or transient."""
        written = stale = 0
        st = self._statements
        steps = [
            (st.upsert_heartbeat, plan.heartbeats),
            (st.mark_deleted if self.on_delete == "mark" else st.delete_status, plan.deletions),
            (st.delete_heartbeat, plan.heartbeat_deletions),
        ]
        try:
            with (
                translate_errors("SQL sink apply failed", self.retry_after),
                self.engine.begin() as conn,
            ):
                # SQLAlchemy keeps an INSERT's rowcount only when asked; it is our `written`.
                conn.execution_options(preserve_rowcount=True)
                if plan.statuses:
                    written, stale = self._upsert_statuses(conn, plan.statuses, deadline)
                for statement, rows in steps:
                    if rows:
                        self._limit_time(conn, deadline)
                        written += _rowcount(conn.execute(statement, rows))
                if progress is not None and progress.offsets:
                    self._limit_time(conn, deadline)
                    conn.execute(st.store_offset, _offset_rows(progress))
        except SinkBackpressureError:
            raise
        except SinkError as exc:
            if _refuses_rows(exc.__cause__):
                raise _RowsRefused(str(exc).removeprefix("SQL sink apply failed: ")) from exc
            raise
        return written, stale

    def _upsert_statuses(
        self, conn: sa.Connection, rows: list[tuple[Any, ...]], deadline: float
    ) -> tuple[int, int]:
        """Upsert the status rows set-based (see docs/sinks.md for why COPY and not unnest on
        PostgreSQL); return the rows changed and the rows refused because the sink holds a
        higher sequence of their key. Those are counted only when not every row was written
        (the others were unchanged content), so a batch written whole pays nothing for it."""
        st = self._statements
        self._limit_time(conn, deadline)
        if self.engine.dialect.name == "sqlite":
            written = _rowcount(conn.exec_driver_sql(st.upsert_status_sql, rows))
            if written == len(rows):
                return written, 0
            # No staging table on SQLite: the keys and sequences go into one of their own.
            conn.exec_driver_sql(_CREATE_SEQUENCES)
            conn.exec_driver_sql(f"DELETE FROM {_SEQUENCES}")
            conn.exec_driver_sql(
                f"INSERT INTO {_SEQUENCES} VALUES (?, ?, ?, ?)",
                [(r[0], r[1], r[2], r[_SEQUENCE]) for r in rows],
            )
            return written, int(conn.execute(_count_stale(_SEQUENCES)).scalar_one())
        _copy_to_stage(conn, rows)
        self._limit_time(conn, deadline)
        written = _rowcount(conn.execute(st.merge_stage))
        if written == len(rows):
            return written, 0
        self._limit_time(conn, deadline)
        return written, int(conn.execute(_count_stale(_STAGE.name)).scalar_one())

    def _limit_time(self, conn: sa.Connection, deadline: float) -> None:
        """Stop here when interrupted or over budget; else bound the next statement by what is
        left of the budget (PostgreSQL: SET LOCAL statement_timeout and lock_timeout)."""
        if self._interrupted.is_set():
            raise SinkBackpressureError("SQL sink apply interrupted: stopping", self.retry_after)
        left = deadline - time.monotonic()
        if left <= 0:
            raise SinkBackpressureError(
                f"SQL sink apply took more than its budget of {self.apply_timeout:g} s",
                self.retry_after,
            )
        if self.engine.dialect.name == "postgresql":
            statement_ms = max(1, int(min(self.statement_timeout, left) * 1000))
            lock_ms = max(1, int(min(self.lock_timeout, left) * 1000))
            conn.execute(_SET_TIMEOUTS, {"statement": f"{statement_ms}ms", "lock": f"{lock_ms}ms"})

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


#: The key of the advisory lock under which a member creates the tables (any fixed number: it
#: only has to be the same for every member of every group writing to the database).
_CREATE_TABLES_LOCK = 0x63617363  # "casc"


def _create_tables(engine: sa.Engine) -> None:
    """Create the missing tables (consumer_offsets with the others). On PostgreSQL under a
    transaction-scoped advisory lock: members starting together against an empty database
    otherwise race between "does the table exist" and CREATE TABLE, and the loser fails on
    pg_type's unique index."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CREATE_TABLES_LOCK})
        metadata.create_all(conn)
        create_availability_schema(conn)


def _create_stage(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(_CREATE_STAGE)
    cursor.close()
    dbapi_connection.commit()


def _copy_to_stage(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Binary COPY of `rows` into the connection's staging table. psycopg's own errors are
    wrapped as SQLAlchemy's, so they are classified like those of any other statement."""
    dbapi = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    try:
        with dbapi.cursor() as cursor, cursor.copy(_COPY_STAGE) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        raise sa.exc.DBAPIError.instance(
            _COPY_STAGE, None, exc, psycopg.Error, dialect=conn.dialect
        ) from exc


def _rowcount(result: sa.CursorResult[Any]) -> int:
    """Rows an executemany changed. sqlite3 and psycopg 3 both sum them over the parameter sets,
    and an upsert whose WHERE refused the update counts 0, so this is the honest `written`."""
    if result.rowcount < 0:
        raise SinkError("the database driver did not report how many rows changed")
    return result.rowcount


_Insert = postgresql.Insert | sqlite.Insert


def _upsert_status(ins: _Insert) -> _Insert:
    """`ins` (rows of resource_status, from VALUES or a SELECT) as an upsert that keeps the rules.

    A newer change is written only if it shows something the row does not: a storm that ends
    where it began (or a consumer replaying after a restart) costs no write. The row then keeps
    its older sequence, which is harmless: any older record of the key that could still be
    replayed comes before the newer one in its partition."""
    rs = resource_status
    shown = ("status", "name", "project_id", "details")
    return ins.on_conflict_do_update(
        index_elements=[rs.c[k] for k in _KEY],
        set_={c.name: ins.excluded[c.name] for c in rs.c if c.name not in _KEY},
        where=sa.or_(
            rs.c.sequence.is_(None),
            sa.and_(
                ins.excluded.sequence > rs.c.sequence,
                sa.or_(
                    rs.c.deleted,
                    *(ins.excluded[name].is_distinct_from(rs.c[name]) for name in shown),
                ),
            ),
        ),
    )


def _sqlite_time(value: datetime | None) -> str | None:
    """A UTC time as SQLAlchemy's SQLite DateTime stores it, so its readers parse it back
    (isoformat, not strftime: a third of the time, for three times a row)."""
    return None if value is None else value.isoformat(" ", "microseconds")[:26]


def _same_time(value: datetime | None) -> datetime | None:
    return value


class _Statements:
    """The statements of an apply, built once for one dialect, and how it passes times."""

    def __init__(self, dialect: sa.Dialect) -> None:
        rs = resource_status
        #: a status row's times as the raw driver takes them (`_plan` converts them)
        self.time: Callable[[datetime | None], Any]
        if dialect.name == "postgresql":
            insert: Callable[[sa.Table], _Insert] = postgresql.insert
            self.time = _same_time
            self.merge_stage = _upsert_status(
                postgresql.insert(rs).from_select(
                    list(STATUS_COLUMNS),
                    sa.select(
                        *(
                            sa.cast(_STAGE.c[name], postgresql.JSONB) if name == "details"
                            else _STAGE.c[name]
                            for name in STATUS_COLUMNS
                        )
                    ),
                )
            )  # fmt: skip
        else:
            insert = sqlite.insert
            self.time = _sqlite_time
            values = sqlite.insert(rs).values({n: sa.bindparam(n) for n in STATUS_COLUMNS})
            compiled = _upsert_status(values).compile(dialect=dialect)
            # exec_driver_sql binds tuples by position: they must come in STATUS_COLUMNS order.
            if tuple(compiled.positiontup or ()) != STATUS_COLUMNS:
                raise AssertionError(f"upsert binds {compiled.positiontup}, not STATUS_COLUMNS")
            self.upsert_status_sql = str(compiled)

        # An already deleted row is touched again only to raise its sequence; a live row yields to
        # a deletion of the same sequence (nothing can follow a deletion), or one without any.
        mark = insert(rs)
        self.mark_deleted = mark.on_conflict_do_update(
            index_elements=[rs.c[k] for k in _KEY],
            set_={
                "deleted": True,
                "sequence": sa.func.coalesce(mark.excluded.sequence, rs.c.sequence),
                "applied_at": mark.excluded.applied_at,
            },
            where=sa.or_(
                mark.excluded.sequence > rs.c.sequence,
                sa.and_(
                    sa.not_(rs.c.deleted),
                    sa.or_(
                        mark.excluded.sequence.is_(None),
                        rs.c.sequence.is_(None),
                        mark.excluded.sequence == rs.c.sequence,
                    ),
                ),
                # A row deleted by a tombstone without a sequence takes the first sequence a
                # later tombstone brings, so an older update replayed after it cannot revive it.
                sa.and_(rs.c.sequence.is_(None), mark.excluded.sequence.is_not(None)),
            ),
        )

        seq = sa.bindparam("sequence", type_=sa.BigInteger)
        self.delete_status = sa.delete(rs).where(
            *(rs.c[k] == sa.bindparam(k, type_=rs.c[k].type) for k in _KEY),
            sa.or_(seq.is_(None), rs.c.sequence.is_(None), rs.c.sequence <= seq),
        )

        hb = site_heartbeat
        beat = insert(hb)
        self.upsert_heartbeat = beat.on_conflict_do_update(
            index_elements=[hb.c.site],
            set_={c.name: beat.excluded[c.name] for c in hb.c if c.name != "site"},
            where=beat.excluded.sequence > hb.c.sequence,
        )
        self.delete_heartbeat = sa.delete(hb).where(
            hb.c.site == sa.bindparam("site", type_=hb.c.site.type),
            sa.or_(seq.is_(None), hb.c.sequence <= seq),
        )

        # The last writer wins, as with Kafka's commits: a database restored from a backup
        # holds lower offsets, and what is read from there on is stored over them.
        co = consumer_offsets
        store = insert(co)
        self.store_offset = store.on_conflict_do_update(
            index_elements=[co.c.consumer_group, co.c.topic, co.c.partition],
            set_={"next_offset": store.excluded.next_offset, "stored_at": store.excluded.stored_at},
        )


def _count_stale(table: str) -> sa.TextClause:
    """After an upsert: the rows of `table` (site, kind, id, sequence) whose key the sink holds
    at a higher sequence (a row written holds its own; unchanged content keeps a lower one)."""
    return sa.text(
        f"SELECT count(*) FROM {table} s JOIN resource_status r "
        "ON r.site = s.site AND r.kind = s.kind AND r.id = s.id "
        "WHERE r.sequence > s.sequence"
    )


def _offset_rows(progress: Progress) -> list[dict[str, Any]]:
    stored_at = datetime.now(UTC)
    return [
        {
            "consumer_group": progress.group,
            "topic": topic,
            "partition": partition,
            "next_offset": offset,
            "stored_at": stored_at,
        }
        for (topic, partition), offset in sorted(progress.offsets.items())
    ]


def _require_distinct_keys(changes: Sequence[Change]) -> None:
    # The usual batch passes on a set of tuples; a key string is only built to name a duplicate.
    if len({(c.site, c.kind, c.id) for c in changes}) == len(changes):
        return
    seen: set[str] = set()
    for change in changes:
        if change.key in seen:
            # Both PostgreSQL and SQLite refuse to upsert one row twice in one statement; the
            # consumer coalesces by key before applying, so this is a bug upstream.
            raise SinkError(f"batch holds key {change.key!r} more than once")
        seen.add(change.key)


def _plan(
    changes: Sequence[Change], applied_at: datetime, time_of: Callable[[datetime | None], Any]
) -> _Plan:
    """Sort `changes` by statement; status rows get their times through `time_of`."""
    plan = _Plan()
    for change in changes:
        reason = _unstorable(change)
        details = None
        if reason is None and isinstance(change, StatusRecord):
            details, reason = _details_json(change.details)
        if reason is not None:
            plan.rejected.append((change, reason))
            continue
        plan.storable.append(change)
        if isinstance(change, Deletion):
            if change.kind == HEARTBEAT_KIND:
                plan.heartbeat_deletions.append({"site": change.site, "sequence": change.sequence})
            else:
                plan.deletions.append(
                    {
                        "site": change.site,
                        "kind": change.kind,
                        "id": change.id,
                        "sequence": change.sequence,
                        "deleted": True,
                        "applied_at": applied_at,
                    }
                )
        elif change.is_heartbeat:
            plan.heartbeats.append(
                {
                    "site": change.site,
                    "status": change.status,
                    "details": dict(change.details),
                    "observed_at": change.observed_at.astimezone(UTC),
                    "sequence": change.sequence,
                    "applied_at": applied_at,
                }
            )
        else:
            plan.statuses.append(_status_tuple(change, details, time_of(applied_at), time_of))
    return plan


def status_row(record: StatusRecord, applied_at: datetime) -> dict[str, Any]:
    """The resource_status row of `record`, as applied at `applied_at`, for a SQLAlchemy
    statement (details as a mapping, which the column's JSON type serialises)."""
    values = _status_tuple(record, None, applied_at, _same_time)
    row = dict(zip(STATUS_COLUMNS, values, strict=True))
    row["details"] = dict(record.details)
    return row


def _status_tuple(
    record: StatusRecord,
    details: str | None,
    applied_at: Any,
    time_of: Callable[[datetime | None], Any],
) -> tuple[Any, ...]:
    """The row of `record` in STATUS_COLUMNS order, with its details as JSON text."""
    source = record.source_updated_at
    return (
        record.site,
        record.kind,
        record.id,
        record.name,
        record.project_id,
        record.status,
        details,
        time_of(source.astimezone(UTC) if source is not None else None),
        time_of(record.observed_at.astimezone(UTC)),
        record.revision,
        record.sequence,
        False,
        applied_at,
    )


#: The text fields a change is checked for (site_heartbeat's text columns have the same limits as
#: resource_status's), each with its column's length limit; all of a StatusRecord, the first
#: three of a Deletion.
_TEXTS = ("site", "kind", "id", "name", "project_id", "status")
_LIMITS = tuple(cast("sa.String", resource_status.c[name].type).length or 0 for name in _TEXTS)


def _unstorable(change: Change) -> str | None:
    """Why `change` can never be stored (its details aside: `_details_json`), or None. Checked
    up front so one bad record does not fail (and endlessly retry) the whole batch. It runs for
    every change of every batch, so it builds nothing per field for a change that keeps the
    rules (the usual one)."""
    if isinstance(change, StatusRecord):
        for name, value in (
            ("observed_at", change.observed_at),
            ("source_updated_at", change.source_updated_at),
        ):
            if value is not None and value.utcoffset() is None:
                return f"{name} {value.isoformat()} has no time zone"
        texts: tuple[str | None, ...] = (
            change.site, change.kind, change.id, change.name, change.project_id, change.status
        )  # fmt: skip
    else:
        texts = (change.site, change.kind, change.id)
    for i, text in enumerate(texts):
        if text is not None and ("\x00" in text or len(text) > _LIMITS[i]):
            if "\x00" in text:
                return f"{_TEXTS[i]} contains a NUL character"
            return f"{_TEXTS[i]} is {len(text)} characters long, the limit is {_LIMITS[i]}"
    if change.sequence is not None and change.sequence not in _BIGINT:
        return f"sequence {change.sequence} does not fit a 64-bit integer"
    if isinstance(change, StatusRecord) and (
        change.revision is not None and change.revision not in _BIGINT
    ):
        return f"revision {change.revision} does not fit a 64-bit integer"
    return None


#: One encoder for every row (json.dumps with an option builds a new one per call); the
#: separators are json.dumps's, which SQLAlchemy's JSON type wrote before: SQLite keeps the text
#: and compares it, so other separators would make every stored row look changed once.
_TO_JSON = json.JSONEncoder(allow_nan=False).encode
#: How JSON writes a NUL character, which PostgreSQL's JSONB refuses.
_JSON_NUL = "\\u0000"


def _details_json(details: Mapping[str, DetailValue]) -> tuple[str | None, str | None]:
    """(details as JSON text, None), or (None, why they cannot be stored). The JSON text is
    searched for an escaped NUL rather than every detail for a NUL: one scan in C; a hit (or
    an encoder error) is explained by looking at the details themselves."""
    try:
        text = _TO_JSON(details if type(details) is dict else dict(details))
    except (TypeError, ValueError) as exc:
        return None, _details_problem(details) or f"details are not JSON: {exc}"
    if _JSON_NUL in text:
        problem = _details_problem(details)
        if problem is not None:
            return None, problem
    return text, None


def _details_problem(details: Mapping[str, DetailValue]) -> str | None:
    for key, value in details.items():
        values = value if isinstance(value, list) else [value]
        for item in [key, *values]:
            if isinstance(item, str) and "\x00" in item:
                return f"details[{key!r}] contains a NUL character"
            if isinstance(item, float) and not math.isfinite(item):
                return f"details[{key!r}] is {item}, which JSON cannot hold"
    return None
