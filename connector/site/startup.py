"""Kafka work at a poller's start, retried: what a transient outage must never turn into an exit.

`until_kafka_answers` runs one start-up step (ensure a topic, open the producer, restore) in a
thread of its own, so a stop is never kept waiting by a Kafka timeout, and again after a backoff
delay for as long as Kafka fails transiently. Settings Kafka cannot take (a topic config that
differs, credentials it refuses) end the start at once: retrying cannot mend them.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from connector.config import SiteSettings
from connector.errors import ConfigError, ConnectorError, KafkaAccessError, KafkaError
from connector.kafka.topics import TopicConfigError
from connector.site.backoff import backoff_delay

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(ConnectorError):
    """A stop (SIGTERM) came while the poller was still starting; nothing is wrong."""

    exit_code = 0


def until_kafka_answers(
    what: str,
    call: Callable[[], T],
    stop: threading.Event,
    site: SiteSettings,
    on_trouble: Callable[[str], None],
    discard: Callable[[T], None] | None = None,
) -> T:
    """`call()`, retried with backoff while it raises a transient KafkaError (each reported to
    `on_trouble`); Stopped as soon as `stop` is set. A call the stop abandons and that succeeds
    later has its result handed to `discard` (to close the client it made)."""
    failures = 0
    while True:
        try:
            return _interruptible(call, stop, what, discard)
        except (TopicConfigError, ConfigError, KafkaAccessError, Stopped):
            raise
        except KafkaError as exc:
            failures += 1
            on_trouble(f"{what}: {exc}")
            delay = backoff_delay(site, failures, random.random())
            log.warning(
                "cannot %s (%d in a row), retrying in %.1fs: %s", what, failures, delay, exc
            )
            if stop.wait(delay):
                raise Stopped(f"stopped while trying to {what}") from exc


def _interruptible(
    call: Callable[[], T],
    stop: threading.Event,
    what: str,
    discard: Callable[[T], None] | None = None,
) -> T:
    """`call()` in a daemon thread; its result or exception, or Stopped as soon as `stop` is
    set (the thread is left to finish on its own: Kafka calls time out, they cannot be
    cancelled; what it makes then goes to `discard`)."""
    outcome: list[T] = []
    failure: list[BaseException] = []
    done = threading.Event()
    lock = threading.Lock()
    abandoned = False

    def target() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed to the caller, who raises it
            failure.append(exc)
        else:
            with lock:
                outcome.append(result)
                late = abandoned
            if late and discard is not None:
                discard(result)
        finally:
            done.set()

    threading.Thread(target=target, name=f"start-{what.replace(' ', '-')}", daemon=True).start()
    while not done.wait(0.2):
        if stop.is_set():
            with lock:
                abandoned = not outcome
            if abandoned:
                raise Stopped(f"stopped while trying to {what}")
    if failure:
        raise failure[0]
    return outcome[0]
