"""What every chaos scenario needs: its names (`ChaosRun`), the connector's commands as child
processes (and their log lines counted per distinct error), a regression watch on the sink, the
sink's rows, and waiting on a condition with a deadline.

The regression watch is a database trigger: any update of a row to a lower site sequence is
recorded in a `regressions` table (the update itself still happens, so nothing hides it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from connector.kafka.settings import KafkaSettings
from connector.sinks import open_sink
from connector.sinks.sql import create_engine

#: The trigger, per dialect: it records a regression, it does not prevent it.
_WATCH = {
    "postgresql": [
        "CREATE TABLE IF NOT EXISTS regressions "
        "(key TEXT, old_sequence BIGINT, new_sequence BIGINT)",
        """CREATE OR REPLACE FUNCTION watch_regressions() RETURNS trigger AS $$
           BEGIN
             IF NEW.sequence < OLD.sequence THEN
               INSERT INTO regressions
               VALUES (NEW.site || '/' || NEW.kind || '/' || NEW.id, OLD.sequence, NEW.sequence);
             END IF;
             RETURN NEW;
           END $$ LANGUAGE plpgsql""",
        "CREATE TRIGGER no_going_back BEFORE UPDATE ON resource_status "
        "FOR EACH ROW EXECUTE FUNCTION watch_regressions()",
    ],
    "sqlite": [
        "CREATE TABLE IF NOT EXISTS regressions "
        "(key TEXT, old_sequence INTEGER, new_sequence INTEGER)",
        """CREATE TRIGGER no_going_back BEFORE UPDATE ON resource_status
           WHEN NEW.sequence < OLD.sequence
           BEGIN INSERT INTO regressions
                 VALUES (NEW.site || '/' || NEW.kind || '/' || NEW.id, OLD.sequence,
                         NEW.sequence);
           END""",
    ],
}


class ChaosError(Exception):
    """A scenario could not be set up or run (not a finding: a finding is a problem)."""


def watch_regressions(sink_url: str) -> None:
    """Create the sink's tables and the regression watch on them."""
    open_sink(sink_url).close()
    engine = create_engine(sink_url)
    try:
        with engine.begin() as conn:
            for statement in _WATCH[engine.dialect.name]:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


class SinkRows:
    """Reads the sink: live rows, sequences, heartbeats, regressions."""

    def __init__(self, sink_url: str) -> None:
        self.engine = create_engine(sink_url)

    def sequences(self) -> dict[str, int | None]:
        """`site/kind/id` -> sequence of every object row (heartbeats left out)."""
        query = sa.text(
            "SELECT site || '/' || kind || '/' || id, sequence FROM resource_status "
            "WHERE kind <> 'site' AND NOT deleted"
        )
        with self.engine.connect() as conn:
            return {str(r[0]): r[1] for r in conn.execute(query)}

    def statuses(self) -> dict[tuple[str, str, str], str | None]:
        """(site, kind, id) -> status of every live object row."""
        query = sa.text(
            "SELECT site, kind, id, status FROM resource_status "
            "WHERE kind <> 'site' AND NOT deleted"
        )
        try:
            with self.engine.connect() as conn:
                return {(r[0], r[1], r[2]): r[3] for r in conn.execute(query)}
        except sa.exc.OperationalError:
            return {}  # the consumer has not created its tables yet

    def heartbeat(self, site: str) -> str | None:
        query = sa.text("SELECT status FROM site_heartbeat WHERE site = :site")
        try:
            with self.engine.connect() as conn:
                value = conn.execute(query, {"site": site}).scalar()
        except sa.exc.OperationalError:
            return None
        return None if value is None else str(value)

    def heartbeat_details(self, site: str) -> dict[str, Any]:
        """The details of the site's last heartbeat ({} before the first)."""
        query = sa.text("SELECT details FROM site_heartbeat WHERE site = :site")
        try:
            with self.engine.connect() as conn:
                value = conn.execute(query, {"site": site}).scalar()
        except sa.exc.OperationalError:
            return {}
        if isinstance(value, str):  # a plain query leaves the JSON column's text as it is
            value = json.loads(value)
        return dict(value) if isinstance(value, dict) else {}

    def regressions(self) -> list[tuple[str, int, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT key, old_sequence, new_sequence FROM regressions"))
            return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def close(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class ChaosRun:
    """One scenario run's names, new per run so that runs on one broker never share a topic or
    a group: the site topics' prefix, the consumer group, the dead-letter topic."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def prefix(self) -> str:
        return f"chaos.{self.run}.status"

    @property
    def group(self) -> str:
        return f"chaos-{self.run}"

    @property
    def dead_letters(self) -> str:
        return f"chaos.{self.run}.deadletter"

    def kafka(self, bootstrap: str) -> KafkaSettings:
        return KafkaSettings(bootstrap=bootstrap, topic_prefix=self.prefix)

    def children(
        self, workdir: Path, bootstrap: str, sink_url: str, more: Mapping[str, str] | None = None
    ) -> Children:
        """Children whose `consume` reads this run's site topics into `sink_url` (and whose
        `produce` writes them), with the `more` environment."""
        return Children(
            workdir,
            {
                "CASCADE_KAFKA_BOOTSTRAP": bootstrap,
                "CASCADE_KAFKA_TOPIC_PREFIX": self.prefix,
                "CASCADE_CONSUMER_GROUP": self.group,
                "CASCADE_CONSUMER_DEAD_LETTER_TOPIC": self.dead_letters,
                "CASCADE_SINK_URL": sink_url,
                **(more or {}),
            },
        )


class Children:
    """The connector's commands as child processes, logs in `log_dir`; all stopped by `stop_all`
    (SIGTERM, then SIGKILL after a grace time), each by its own pid."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        self.env.update(env)
        self._running: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        self._starts: dict[str, int] = {}

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        """Start `cascade-connector ARGS` as `name` (its log: NAME.N.log, N counting restarts)."""
        if name in self._running:
            raise ChaosError(f"{name} is already running")
        n = self._starts[name] = self._starts.get(name, 0) + 1
        log = (self.log_dir / f"{name}.{n}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
        )
        self._running[name] = (proc, log)

    def pid(self, name: str) -> int:
        return self._running[name][0].pid

    def alive(self, name: str) -> bool:
        return name in self._running and self._running[name][0].poll() is None

    def exit_code(self, name: str) -> int | None:
        return self._running[name][0].poll()

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.{self._starts.get(name, 0)}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self, name: str) -> str:
        """Everything `name` logged so far, over all its starts."""
        return "".join(
            (self.log_dir / f"{name}.{n}.log").read_text(errors="replace")
            for n in range(1, self._starts.get(name, 0) + 1)
        )

    def kill(self, name: str) -> None:
        """SIGKILL `name` and reap it."""
        proc, log = self._running.pop(name)
        proc.kill()
        proc.wait()
        log.close()

    def terminate(self, name: str, timeout: float) -> float | None:
        """SIGTERM `name`; seconds until it exited, or None (then it is SIGKILLed) if it did not
        within `timeout`."""
        proc, log = self._running.pop(name)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
            return time.monotonic() - started
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
        finally:
            log.close()

    def wait(self, name: str, timeout: float) -> int | None:
        """Wait for `name` to exit by itself; its exit code, or None if it did not in time."""
        proc, log = self._running[name]
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._running.pop(name)
        log.close()
        return code

    def stop_all(self, grace: float = 15.0) -> None:
        for name in list(self._running):
            if self.alive(name):
                self._running[name][0].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, (proc, log) in list(self._running.items()):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            del self._running[name]


#: A warning or error line of our text log format: its logger and its message.
_PROBLEM_LINE = re.compile(r"^\S+ \S+ (?:WARNING|ERROR|CRITICAL)\s+(\S+): (.*)$", re.MULTILINE)
#: What differs between two lines about one error: the counting words of the lines that follow
#: a first one (`RepeatedErrors`, the commit retry log), and numbers (times, counts, offsets).
_ERROR_VARYING = re.compile(
    r"^no longer seen \(\d+ times over \d+ s\): "
    r"| \(repeated \d+ times in the last \d+ s, \d+ since it began \d+ s ago\)$"
)


def lines_per_error(log: str) -> Counter[str]:
    """How many warning and error lines `log` (as `Children` writes them) holds about each
    distinct error: `logger: message`, less what varies between lines about the same error."""
    return Counter(
        f"{logger}: {re.sub(r'[0-9]+', 'N', _ERROR_VARYING.sub('', message))}"
        for logger, message in _PROBLEM_LINE.findall(log)
    )


def wait_for(
    condition: Callable[[], object],
    timeout: float,
    check: Callable[[], None] | None = None,
    every: float = 0.2,
) -> float | None:
    """Seconds until `condition()` held, or None when `timeout` passed first. `check` runs between
    tries (to fail fast when a child died); a connection error counts as "not yet"."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (OSError, sa.exc.OperationalError):
            pass
        if check is not None:
            check()
        if time.monotonic() - started > timeout:
            return None
        time.sleep(every)
