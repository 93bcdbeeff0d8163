"""PollTrigger: notifications end a poller's wait early, debounced; storms pause them. And what
the listener reads of a notification and of the bus URL."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from datetime import UTC, datetime

import pytest

from connector.errors import ConfigError
from connector.site.listener import (
    OsloEndpoint,
    Report,
    Tally,
    fields_of,
    kind_of,
    parse_rabbit_url,
)
from connector.site.notifications import redacted
from connector.site.trigger import PollTrigger


class Counts:
    def __init__(self) -> None:
        self.polls = self.debounced = self.stale = self.storms = 0


def trigger(counts: Counts, debounce: float = 0.05, storm_share: float = 0.5) -> PollTrigger:
    def poll() -> None:
        counts.polls += 1

    def debounced(n: int) -> None:
        counts.debounced += n

    def stale(n: int) -> None:
        counts.stale += n

    def storm() -> None:
        counts.storms += 1

    return PollTrigger(
        debounce,
        interval=30.0,
        storm_share=storm_share,
        on_poll=poll,
        on_debounced=debounced,
        on_stale=stale,
        on_storm=storm,
    )


def test_without_notifications_the_wait_lasts_its_timeout() -> None:
    counts = Counts()
    began = time.monotonic()
    assert trigger(counts).wait(threading.Event(), 0.3) is False
    assert time.monotonic() - began >= 0.3
    assert counts.polls == 0


def test_a_burst_of_notifications_ends_the_wait_once_after_the_debounce() -> None:
    counts = Counts()
    t = trigger(counts, debounce=0.1)
    began = time.monotonic()
    for _ in range(50):
        t.fire()
    assert t.wait(threading.Event(), 30.0) is True
    waited = time.monotonic() - began
    assert 0.1 <= waited < 5.0
    assert (counts.polls, counts.debounced) == (1, 49)
    # Nothing pending any more: the next wait runs its course.
    assert t.wait(threading.Event(), 0.2) is False


def test_a_notification_during_a_poll_arms_the_next_one() -> None:
    counts = Counts()
    t = trigger(counts)
    t.fire()
    assert t.wait(threading.Event(), 30.0) is True
    t.fire()  # the poll is running now
    assert t.wait(threading.Event(), 30.0) is True
    assert counts.polls == 2


def test_stop_ends_the_wait() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    began = time.monotonic()
    assert trigger(Counts()).wait(stop, 30.0) is False
    assert time.monotonic() - began < 5.0


def test_a_triggered_poll_that_lists_most_of_its_kind_pauses_triggers_for_an_interval() -> None:
    counts = Counts()
    t = trigger(counts)
    t.fire()
    assert t.wait(threading.Event(), 30.0) is True
    t.ended(listed=1_500, span=0.0, known=2_000)  # a site restart: most objects at once
    t.fire()
    assert t.wait(threading.Event(), 0.3) is False  # paused: the interval poll comes first
    assert counts.storms == 1


def test_steady_churn_a_slow_poll_and_a_small_kind_do_not_pause() -> None:
    counts = Counts()
    t = trigger(counts)
    # Steady churn (333 a second over 2,000 objects), also when a slow poll listed seconds of
    # it; a handful of changes on a small kind.
    for listed, span, known in ((300, 0.0, 2_000), (1_900, 5.0, 2_000), (40, 0.0, 10)):
        t.fire()
        assert t.wait(threading.Event(), 30.0) is True
        t.ended(listed, span, known)
    t.fire()
    assert t.wait(threading.Event(), 30.0) is True
    assert counts.storms == 0


def test_a_long_poll_takes_a_due_early_poll_once_and_not_before_it_is_due() -> None:
    counts = Counts()
    t = trigger(counts, debounce=0.2)
    assert t.take_due() is False  # nothing armed
    t.fire()
    assert t.take_due() is False  # armed, not due yet
    time.sleep(0.25)
    assert t.take_due() is True
    assert t.take_due() is False
    assert counts.polls == 1


def test_notifications_about_changes_a_finished_poll_listed_trigger_no_poll() -> None:
    """In a storm the services' notifications lag behind the changes; those stamped before a
    finished poll began are about changes it listed, and wake nothing."""
    counts = Counts()
    t = trigger(counts, debounce=0.0)
    t.listed_until(1_000.0)
    t.fire(stamped=999.5, count=40)
    assert t.take_due() is False
    assert counts.stale == 40
    t.fire(stamped=1_000.5, count=3)  # news: after the poll began
    assert t.take_due() is True
    t.fire(stamped=None)  # no timestamp: news
    assert t.take_due() is True
    assert (counts.polls, counts.debounced, counts.stale) == (2, 2, 40)


def test_the_listener_reports_per_kind_how_many_arrived_and_the_newest_stamp() -> None:
    received, sending = multiprocessing.Pipe(duplex=False)
    OsloEndpoint(Report(sending)).info(
        [
            {"event_type": "instance.update", "metadata": {"timestamp": "2026-12-02 01:00:01"}},
            {"event_type": "instance.update", "metadata": {"timestamp": "2026-12-02 01:00:02.5"}},
            {"event_type": "port.update.end", "metadata": {"timestamp": "not a time"}},
            {"event_type": "image.upload"},
        ]
    )
    newest = datetime(2026, 12, 2, 1, 0, 2, 500_000, tzinfo=UTC).timestamp()
    assert received.recv() == (
        "seen",
        {"server": (2, newest), "port": (1, None), "other": (1, None)},
    )
    assert not received.poll(), "one report per batch"


def test_the_pika_listener_reads_event_type_and_stamp_from_the_envelope_or_none() -> None:
    inner = {"event_type": "volume.update.end", "timestamp": "2026-12-02 01:00:03.25"}
    enveloped = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()
    assert fields_of(enveloped) == ("volume.update.end", "2026-12-02 01:00:03.25")
    assert fields_of(json.dumps(inner).encode()) == ("volume.update.end", "2026-12-02 01:00:03.25")
    for garbage in (b"", b"not json", b"[1, 2]", b'{"oslo.message": "{broken"}', b"\xff\xfe"):
        assert fields_of(garbage) == (None, None)
    tally = Tally()
    tally.add(*fields_of(enveloped))
    tally.add(*fields_of(b"not json"))
    stamp = datetime(2026, 12, 2, 1, 0, 3, 250_000, tzinfo=UTC).timestamp()
    assert tally.take() == {"volume": (1, stamp), "other": (1, None)}
    assert not tally and tally.take() == {}


def test_rabbit_urls_are_read_as_oslo_messaging_reads_them() -> None:
    bus = parse_rabbit_url("rabbit://u1:p%40ss@h1:5673,u2:pw@h2/site%2Fa?ssl=1&heartbeat=9")
    assert [(h.host, h.port, h.user, h.password) for h in bus.hosts] == [
        ("h1", 5673, "u1", "p@ss"),
        ("h2", 5672, "u2", "pw"),
    ]
    assert (bus.virtual_host, bus.ssl, bus.ignored) == ("site/a", True, ("heartbeat",))
    plain = parse_rabbit_url("rabbit://h")
    assert (plain.hosts[0].user, plain.virtual_host, plain.ssl) == ("guest", "/", False)
    with pytest.raises(ConfigError, match=r"oslo\.messaging for other transports"):
        parse_rabbit_url("kafka://h:9092/")
    with pytest.raises(ConfigError, match="port is not a number") as caught:
        parse_rabbit_url("rabbit://u:secret@h:x/")
    assert "secret" not in str(caught.value)


def test_event_types_map_to_kinds() -> None:
    assert kind_of("instance.update") == "server"
    assert kind_of("compute.instance.power_off.end") == "server"
    assert kind_of("volume.attach.end") == "volume"
    assert kind_of("port.update.end") == "port"
    assert kind_of("image.upload") is None


def test_the_password_never_shows() -> None:
    assert redacted("rabbit://nova:s3cret@10.0.0.1:5672/") == "rabbit://nova:***@10.0.0.1:5672/"


def test_the_interval_poll_is_never_put_off_and_covers_what_was_notified() -> None:
    counts = Counts()
    t = trigger(counts, debounce=0.0)
    t.fire()
    # The interval poll is due now: it is the one that runs, and it lists what the
    # notification was about, so nothing stays armed after it.
    assert t.wait(threading.Event(), 0.0) is False
    assert counts.polls == 0
    assert t.wait(threading.Event(), 0.2) is False
    t.fire()
    assert t.wait(threading.Event(), 5.0) is True
    assert counts.polls == 1
