"""A poller and a top consumer running together against a real site, for the tests against real
OpenStack services: `Churn` runs `run_site` (short interval) in a thread and a consumer into
SQLite (tests/support/top.py's `consumer_running`) and reads the poller's metrics; `live_rows`
is what that SQLite top holds; `top_equals` waits until it holds what the service lists."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from connector.config import Settings
from connector.sinks.sql import create_engine
from connector.site.runner import run_site
from tests.support import wait_for
from tests.support.top import consumer_running

#: (kind, id) -> (status, name, project id), of the top or of the service's own listing
Rows = dict[tuple[str, str], tuple[str | None, str | None, str | None]]


def live_rows(db: Path) -> Rows:
    """What the SQL sink at `db` holds: every live row but the site's heartbeat."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT kind, id, status, name, project_id, deleted FROM resource_status")
            )
            return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows if r[0] != "site" and not r[5]}
    except sa.exc.OperationalError:
        return {}  # the consumer has not made the table yet
    finally:
        engine.dispose()


def top_equals(listed: Callable[[], Rows], db: Path, after: str, timeout: float = 120) -> None:
    """Wait until the SQL sink at `db` holds what `listed()` (the service) lists; name the rows
    that differ."""
    try:
        wait_for(lambda: live_rows(db) == listed(), timeout, f"the top after {after}")
    except AssertionError:
        expected, rows = listed(), live_rows(db)
        wrong = [k for k in expected.keys() | rows.keys() if expected.get(k) != rows.get(k)]
        raise AssertionError(f"{after}: {len(wrong)} rows differ, e.g. {wrong[:3]}") from None


class Churn:
    """A poller of `kind` (run_site, polling every `interval` seconds) and a consumer into the
    SQLite file `db`, running in threads while the `with` block lasts."""

    def __init__(
        self,
        bootstrap: str,
        cloud: str,
        name: Callable[[str], str],
        db: Path,
        kind: str = "volume",
        interval: float = 2.0,
    ) -> None:
        self.kind = kind
        self.settings = Settings.model_validate(
            {
                "kafka": {"bootstrap": bootstrap, "topic_prefix": name("status")},
                "site": {
                    "name": cloud,
                    "kinds": kind,
                    "interval": interval,
                    "heartbeat_interval": 1,
                    "clock_skew": 1.0,
                },
                "sink": {"url": f"sqlite:///{db}"},
                "consumer": {
                    "group": name("group"),
                    "dead_letter_topic": name("dlq"),
                    "batch_wait_ms": 100,
                },
            }
        )
        self.stop = threading.Event()
        self.registry = CollectorRegistry()
        self.poller = threading.Thread(
            target=run_site,
            args=(self.settings,),
            kwargs={"registry": self.registry, "stop": self.stop},
        )
        self._consumer = ExitStack()

    def __enter__(self) -> Churn:
        self.poller.start()
        try:
            self._consumer.enter_context(consumer_running(self.settings, timeout=30))
        except BaseException:
            self._stop_poller()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self._consumer.close()  # stops the consumer; raises what it raised
        finally:
            self._stop_poller()

    def _stop_poller(self) -> None:
        self.stop.set()
        self.poller.join(15)
        assert not self.poller.is_alive(), "the poller did not stop within 15 s"

    def published(self) -> float:
        """Records published so far: changes and tombstones."""
        names = ("cascade_site_changes_published_total", "cascade_site_tombstones_total")
        return sum(self._sample(name) for name in names)

    def failed_polls(self) -> float:
        return self._sample("cascade_site_api_errors_total")

    def polls(self) -> float:
        """Incremental polls made so far."""
        return self._sample("cascade_site_poll_duration_seconds_count", mode="incremental")

    def _sample(self, name: str, **extra: str) -> float:
        site = self.settings.site.name
        assert site is not None
        labels = {"site": site, "kind": self.kind, **extra}
        return self.registry.get_sample_value(name, labels) or 0.0
