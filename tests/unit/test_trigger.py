"""PollTrigger: notifications end a poller's wait early, debounced; storms pause them."""

from __future__ import annotations

import threading
import time

from connector.site.notifications import kind_of, redacted
from connector.site.trigger import PollTrigger


class Counts:
    def __init__(self) -> None:
        self.polls = self.debounced = self.storms = 0
        self.listed = 0.0


def trigger(counts: Counts, debounce: float = 0.05, storm_rate: float = 1000.0) -> PollTrigger:
    def poll() -> None:
        counts.polls += 1

    def debounced() -> None:
        counts.debounced += 1

    def storm() -> None:
        counts.storms += 1

    return PollTrigger(
        debounce,
        interval=30.0,
        overlap=3.0,
        storm_rate=storm_rate,
        listed=lambda: counts.listed,
        on_poll=poll,
        on_debounced=debounced,
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


def test_a_triggered_poll_that_finds_a_storm_pauses_triggers_for_an_interval() -> None:
    counts = Counts()
    t = trigger(counts, storm_rate=100.0)
    t.fire()
    assert t.wait(threading.Event(), 30.0) is True
    counts.listed += 10_000  # the triggered poll listed 10,000 objects over about 3 s
    t.fire()
    assert t.wait(threading.Event(), 0.3) is False  # paused: the interval poll comes first
    assert counts.storms == 1


def test_a_calm_triggered_poll_does_not_pause() -> None:
    counts = Counts()
    t = trigger(counts, storm_rate=1000.0)
    t.fire()
    assert t.wait(threading.Event(), 30.0) is True
    counts.listed += 300  # 100 per second over the 3 s overlap
    t.fire()
    assert t.wait(threading.Event(), 30.0) is True
    assert counts.storms == 0


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
