"""Offsets kept in the SQL sink, against the real broker and real SQLite and PostgreSQL: a copy
of the database taken mid-stream (sqlite3's backup of the file / pg_dump), restored after the
stream went on, is brought back to the last record per key by restarting the consumer, no offset
touched by hand; an empty database under a group that read everything before is rebuilt from
the log; a consumer SIGKILLed while it applies, restarted, applies no change twice (a trigger
counts the writes of each key and sequence) and skips none."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.config import Settings, load_settings
from connector.dev.chaos.harness import Children
from connector.dev.local_postgres import LocalPostgres, find_bin_dir
from connector.records.model import Change, Deletion, StatusRecord
from connector.sinks import open_sink
from connector.sinks.sql import create_engine, sqlalchemy_url
from tests.support import wait_for
from tests.support.kafka import committed_offsets, create_topic, end_offsets, publish
from tests.support.top import consumer_running

SITE = "resume"
T0 = datetime(2026, 12, 1, tzinfo=UTC)
#: (site, kind, id) -> (status, or "deleted"; sequence)
State = dict[tuple[str, str, str], tuple[str, int]]


def settings_for(bootstrap: str, name: Callable[[str], str], url: str) -> Settings:
    return load_settings(
        flags={
            "kafka": {"bootstrap": bootstrap, "topic_prefix": name("status")},
            "sink": {"url": url},
            "consumer": {
                "group": name("group"),
                "dead_letter_topic": name("dlq"),
                "batch_wait_ms": 100,
                "batch_size": 100,
            },
        }
    )


def status(obj: int, seq: int) -> StatusRecord:
    return StatusRecord(
        site=SITE,
        kind="server",
        id=f"vm-{obj}",
        status=f"S{seq}",
        sequence=seq,
        observed_at=T0 + timedelta(milliseconds=seq),
    )


def truth(changes: Iterable[Change]) -> State:
    """The last record per key, as the sink marks it (deletions marked, not removed)."""
    last: State = {}
    for change in changes:
        assert change.sequence is not None
        shown = "deleted" if isinstance(change, Deletion) else change.status or ""
        last[(change.site, change.kind, change.id)] = (shown, change.sequence)
    return last


def top_state(url: str) -> State:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT site, kind, id, status, sequence, deleted FROM resource_status")
            ).all()
    finally:
        engine.dispose()
    return {(r[0], r[1], r[2]): ("deleted" if r[5] else r[3], r[4]) for r in rows}


class Database:
    """Copies, restores and empties the sink's database: SQLite through sqlite3's online backup
    (a consistent copy of the file while the consumer writes), PostgreSQL with pg_dump and
    pg_restore of the cluster's own version."""

    def __init__(self, url: str, tmp_path: Path, server: LocalPostgres | None) -> None:
        self.url = url
        self.copy = tmp_path / "backup"
        self.server = server

    def take_copy(self) -> None:
        if self.server is None:
            with self._sqlite() as src, sqlite3.connect(self.copy) as dst:
                src.backup(dst)
        else:
            self._pg("pg_dump", "--format=custom", f"--file={self.copy}", self.url)

    def restore(self) -> None:
        if self.server is None:
            with sqlite3.connect(self.copy) as src, self._sqlite() as dst:
                src.backup(dst)
        else:
            self.empty()
            self._pg("pg_restore", f"--dbname={self.url}", str(self.copy))

    def empty(self) -> None:
        if self.server is None:
            Path(self._file()).unlink()
            return
        name = self.url.rsplit("/", 1)[1]
        admin = sa.create_engine(sqlalchemy_url(self.server.url), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()

    def _file(self) -> str:
        return self.url.removeprefix("sqlite:///")

    @contextmanager
    def _sqlite(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self._file())
        try:
            yield conn
        finally:
            conn.close()

    def _pg(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(find_bin_dir() / program), *args], check=True, capture_output=True, timeout=120
        )


@pytest.fixture
def database(sql_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    server = request.getfixturevalue("postgres_server") if sql_url.startswith("postgres") else None
    return Database(sql_url, tmp_path, server)


def test_a_copy_taken_mid_stream_and_restored_replays_exactly_what_it_lost(
    kafka_bootstrap: str, unique_name: Callable[[str], str], database: Database
) -> None:
    settings = settings_for(kafka_bootstrap, unique_name, database.url)
    topic = f"{settings.kafka.topic_prefix}.{SITE}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    before = [status(obj, obj + 1) for obj in range(200)]
    # After the copy: updates, deletions and new objects.
    after: list[Change] = [status(obj, 1000 + obj) for obj in range(0, 300, 2)]
    after += [Deletion(SITE, "server", f"vm-{obj}", 2000 + obj) for obj in range(1, 100, 3)]
    with consumer_running(settings):
        publish(kafka_bootstrap, topic, before)
        wait_for(lambda: top_state(database.url) == truth(before), 60, "the first records")
        database.take_copy()
        publish(kafka_bootstrap, topic, after)
        wait_for(lambda: top_state(database.url) == truth(before + after), 60, "the rest")
    committed = committed_offsets(kafka_bootstrap, settings.consumer.group, topic)
    assert committed == end_offsets(kafka_bootstrap, topic)

    database.restore()
    assert top_state(database.url) == truth(before), "the copy holds only the first records"
    with consumer_running(settings, until_idle=True, timeout=120.0):
        pass
    assert top_state(database.url) == truth(before + after)


def test_an_empty_database_under_a_group_that_read_everything_is_rebuilt_from_the_log(
    kafka_bootstrap: str, unique_name: Callable[[str], str], database: Database
) -> None:
    settings = settings_for(kafka_bootstrap, unique_name, database.url)
    topic = f"{settings.kafka.topic_prefix}.{SITE}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    changes = [status(i % 150, i + 1) for i in range(450)]
    publish(kafka_bootstrap, topic, changes)
    with consumer_running(settings, until_idle=True, timeout=120.0):
        pass
    assert top_state(database.url) == truth(changes)
    assert committed_offsets(kafka_bootstrap, settings.consumer.group, topic) == end_offsets(
        kafka_bootstrap, topic
    )

    database.empty()
    with consumer_running(settings, until_idle=True, timeout=120.0):
        pass
    assert top_state(database.url) == truth(changes)


#: Per dialect: a table counting the writes of each key and sequence, and the trigger filling
#: it on every row written (a transaction rolled back takes its counts with it). On PostgreSQL
#: each write also sleeps 2 ms, so that an apply lasts long enough to be killed in.
_COUNT_WRITES = {
    "postgresql": [
        "CREATE TABLE writes (key TEXT, sequence BIGINT, n INT NOT NULL, "
        "PRIMARY KEY (key, sequence))",
        """CREATE FUNCTION count_writes() RETURNS trigger AS $$
           BEGIN
             PERFORM pg_sleep(0.002);
             INSERT INTO writes VALUES (NEW.site || '/' || NEW.kind || '/' || NEW.id,
                                        NEW.sequence, 1)
             ON CONFLICT (key, sequence) DO UPDATE SET n = writes.n + 1;
             RETURN NEW;
           END $$ LANGUAGE plpgsql""",
        "CREATE TRIGGER count_writes AFTER INSERT OR UPDATE ON resource_status "
        "FOR EACH ROW EXECUTE FUNCTION count_writes()",
    ],
    "sqlite": [
        "CREATE TABLE writes (key TEXT, sequence INTEGER, n INTEGER NOT NULL, "
        "PRIMARY KEY (key, sequence))",
        *(
            f"""CREATE TRIGGER count_{event.lower()}s AFTER {event} ON resource_status
                BEGIN INSERT INTO writes VALUES (NEW.site || '/' || NEW.kind || '/' || NEW.id,
                                                 NEW.sequence, 1)
                      ON CONFLICT (key, sequence) DO UPDATE SET n = n + 1;
                END"""
            for event in ("INSERT", "UPDATE")
        ),
    ],
}
#: An apply of status rows running on PostgreSQL, as pg_stat_activity shows it.
_APPLYING = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND state = 'active' AND query LIKE 'INSERT INTO resource_status%'"
)


def test_a_consumer_sigkilled_while_it_applies_applies_nothing_twice_and_skips_nothing(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    database: Database,
    tmp_path: Path,
) -> None:
    settings = settings_for(kafka_bootstrap, unique_name, database.url)
    topic = f"{settings.kafka.topic_prefix}.{SITE}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    open_sink(database.url).close()
    engine = create_engine(database.url)
    with engine.begin() as conn:
        for statement in _COUNT_WRITES[engine.dialect.name]:
            conn.execute(sa.text(statement))
    children = Children(
        tmp_path,
        {
            "CASCADE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CASCADE_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "CASCADE_CONSUMER_GROUP": settings.consumer.group,
            "CASCADE_CONSUMER_DEAD_LETTER_TOPIC": settings.consumer.dead_letter_topic,
            "CASCADE_SINK_URL": database.url,
        },
    )
    consume = ["consume", "--batch-size", "100", "-X", "session.timeout.ms=6000"]

    def written() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM writes")).scalar_one())

    def applying(before: int) -> bool:
        """A call of this life applies, after one of its calls was applied: the kill lands
        with part of a window applied, which the next life reads again."""
        if written() <= before:
            return False
        if engine.dialect.name == "sqlite":
            return True  # no view of a transaction in flight: once a call was applied
        with engine.connect() as conn:
            return int(conn.execute(_APPLYING).scalar_one()) > 0

    changes: list[Change] = []
    try:
        for life in range(2):
            chunk = [status(i % 400, len(changes) + i + 1) for i in range(800)]
            changes += chunk
            publish(kafka_bootstrap, topic, chunk)
            before = written()
            children.start("consumer", *consume)
            wait_for(partial(applying, before), 60, f"consumer {life + 1} applying")
            children.kill("consumer")
        children.start("consumer", *consume, "--until-idle")
        assert children.wait("consumer", 120) == 0, children.log_tail("consumer")
    finally:
        children.stop_all()
    with engine.connect() as conn:
        twice = conn.execute(sa.text("SELECT key, sequence, n FROM writes WHERE n > 1")).all()
    engine.dispose()
    assert twice == [], "changes applied more than once"
    assert top_state(database.url) == truth(changes), "a change skipped"
