"""A simulated site for integration tests: settings for a poller of it, its control API, its
truth, and a reader of the site topic to compare with it."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from connector.config import Settings, load_settings
from connector.dev.sim import RunningSim
from connector.kafka.reader import TopicReader
from connector.records.codec import Codec
from connector.records.messages import change_from_message
from connector.records.model import Change, Deletion, StatusRecord
from tests.support.kafka import end_offsets

ALL_KINDS = "server,volume,port,network,router,floatingip"


#: Fields of the sim's truth that are not status (they move on every update).
NOT_STATUS = {"updated_at", "revision_number", "network_id", "floating_ip_address"}


def site_settings(bootstrap: str, sim: RunningSim, kinds: str = ALL_KINDS, **site: Any) -> Settings:
    return load_settings(
        flags={
            "kafka": {"bootstrap": bootstrap, "topic_prefix": "test.produce"},
            "site": {"name": sim.cloud, "kinds": kinds, **site},
        }
    )


def control(sim: RunningSim, path: str, body: dict[str, Any] | None = None) -> Any:
    method = "GET" if body is None else "POST"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(sim.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def reset_stats(sim: RunningSim) -> None:
    urllib.request.urlopen(urllib.request.Request(sim.url + "/_sim/stats", method="DELETE"))


def truth(sim: RunningSim, kinds: str = ALL_KINDS) -> dict[tuple[str, str], dict[str, Any]]:
    query = "&".join(f"kind={k}" for k in kinds.split(","))
    return {
        (o["kind"], o["id"]): {k: v for k, v in o.items() if k not in NOT_STATUS}
        for o in control(sim, f"/_sim/truth?{query}")["objects"]
    }


class Topic:
    """Reads a site topic from the beginning; `new()` returns what arrived since the last call."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._settings = load_settings(flags={"kafka": {"bootstrap": bootstrap}}).kafka
        self._bootstrap = bootstrap
        self._topic = topic
        #: per partition, the offset after the last message `new()` returned
        self._read: dict[int, int] = {}
        self._codec = Codec()

    def _messages(self) -> list[Any]:
        reader = TopicReader(self._settings, self._topic, from_beginning=True)
        try:
            return list(reader.messages(stop_at_end=True, timeout=60))
        finally:
            reader.close()

    def all(self, settle: bool = True) -> list[Change]:
        """Every change on the topic. With `settle` (after a poller's flush), first wait until
        what was committed is visible to committed readers: a commit returns before its
        markers reach every partition, and a read in between ends before the transaction on
        the partitions still without one (a third of a topic went missing that way)."""
        if settle:
            self.settle()
        return [change_from_message(m, self._codec) for m in self._messages()]

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until no transaction is in flight on the topic (the committed view ends where
        the log does), or `timeout` (a poller still running keeps one open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if end_offsets(self._bootstrap, self._topic) == end_offsets(
                self._bootstrap, self._topic, committed=False
            ):
                return
            time.sleep(0.1)

    def new(self) -> list[Change]:
        # Partitions interleave differently on every read: remember offsets, not a count.
        fresh = [m for m in self._messages() if m.offset() >= self._read.get(m.partition(), 0)]
        for m in fresh:
            self._read[m.partition()] = max(self._read.get(m.partition(), 0), m.offset() + 1)
        return [change_from_message(m, self._codec) for m in fresh]


def objects(changes: list[Change]) -> list[Change]:
    """Everything but heartbeats."""
    return [c for c in changes if not (isinstance(c, StatusRecord) and c.is_heartbeat)]


def latest(changes: list[Change]) -> dict[tuple[str, str], StatusRecord]:
    """The state the topic describes: last record per key, tombstones removing keys."""
    state: dict[tuple[str, str], StatusRecord] = {}
    for change in objects(changes):
        if isinstance(change, Deletion):
            state.pop((change.kind, change.id), None)
        else:
            assert isinstance(change, StatusRecord)
            state[(change.kind, change.id)] = change
    return state


def differences(changes: list[Change], expected: dict[tuple[str, str], Any]) -> list[str]:
    """How the state the topic describes differs from the site's truth (status and keys)."""
    state = latest(changes)
    out = [f"missing {key}" for key in set(expected) - set(state)]
    out += [f"extra {key}" for key in set(state) - set(expected)]
    out += [
        f"{key}: {record.status} != {expected[key]['status']}"
        for key, record in state.items()
        if key in expected and record.status != expected[key]["status"]
    ]
    return out


def assert_topic_matches_truth(changes: list[Change], expected: dict[tuple[str, str], Any]) -> None:
    wrong = differences(changes, expected)
    assert wrong == [], f"{len(wrong)} differences, e.g. {wrong[:3]}"
