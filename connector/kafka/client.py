"""What every librdkafka client of ours shares: how it is made, and how its errors are logged.

librdkafka reports a broker out of reach on every reconnect attempt, through `error_cb` and
through its own log, from every client of the process: hundreds of identical lines a second
during an outage. Both go through one `RepeatedErrors` per process, which logs a distinct error
once, then how often it recurred every `REPEAT_LOG_EVERY` seconds while it lasts, and a line when
it has not recurred for `QUIET_AFTER` seconds.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import confluent_kafka

from connector.errors import ConfigError

log = logging.getLogger(__name__)
#: librdkafka's own log lines below warnings (its `logger`; the rest go to `CLIENT_ERRORS`).
librdkafka_log = logging.getLogger("connector.kafka.librdkafka")

Client = TypeVar("Client")

#: Every reader of site topics reads committed records only, whatever `-X` says: the site's
#: pollers publish in transactions, and a fenced poller's unfinished transaction is aborted.
#: (librdkafka's default already, pinned so that no passthrough setting turns fencing off.)
READ_COMMITTED = {"isolation.level": "read_committed"}

#: Seconds between the lines that count an error still recurring.
REPEAT_LOG_EVERY = 30.0
#: Seconds without a recurrence after which an error counts as over (librdkafka retries a
#: connection at least every `reconnect.backoff.max.ms`, 10 s by default).
QUIET_AFTER = 30.0

#: What differs between two reports of the same error: librdkafka's timing and its own count of
#: suppressed repeats, and the thread name its log lines start with.
_VARYING = re.compile(
    r"^\[thrd:[^\]]*\]:\s*"
    r"|\s*\(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)"
)


@dataclass
class _Seen:
    level: int
    #: as first logged
    text: str
    first: float
    #: when the last line about it was written, and the occurrences since
    logged: float
    since_logged: int = 0
    total: int = 1
    last: float = 0.0


class RepeatedErrors:
    """Logs recurring errors without a line per occurrence; thread-safe. An error is told apart
    by its text less what varies between reports of it (`_VARYING`). With `background`, a
    daemon thread writes the "no longer seen" lines; without, `sweep()` does."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = REPEAT_LOG_EVERY,
        quiet: float = QUIET_AFTER,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self._log = logger
        self.every = every
        self.quiet = quiet
        self._clock = clock
        self._background = background
        self._lock = threading.Lock()
        self._active: dict[str, _Seen] = {}
        self._sweeper: threading.Thread | None = None

    def __repr__(self) -> str:
        with self._lock:
            return f"RepeatedErrors(active={len(self._active)})"

    def report(self, level: int, text: str, prefix: str = "") -> None:
        """One occurrence of the error `text`, logged at `level` (after `prefix`, which does not
        tell errors apart) when it is the first or a count is due."""
        key = _VARYING.sub("", text)
        now = self._clock()
        with self._lock:
            seen = self._active.get(key)
            if seen is None:
                self._active[key] = _Seen(level, prefix + key, now, now, last=now)
                self._start_sweeper()
                line: tuple[str, tuple[object, ...]] | None = ("%s", (prefix + key,))
            else:
                seen.total += 1
                seen.since_logged += 1
                seen.last = now
                line = None
                if now - seen.logged >= self.every:
                    line = (
                        "%s (repeated %d times in the last %.0f s, %d since it began %.0f s ago)",
                        (
                            seen.text,
                            seen.since_logged,
                            now - seen.logged,
                            seen.total,
                            now - seen.first,
                        ),
                    )
                    seen.logged, seen.since_logged = now, 0
        if line is not None:
            self._log.log(level, line[0], *line[1])

    def sweep(self) -> None:
        """Log the errors that have not recurred for `quiet` seconds as over, and forget them."""
        now = self._clock()
        with self._lock:
            over = {k: s for k, s in self._active.items() if now - s.last >= self.quiet}
            for key in over:
                del self._active[key]
        for seen in over.values():
            self._log.log(
                seen.level,
                "no longer seen (%d times over %.0f s): %s",
                seen.total,
                seen.last - seen.first,
                seen.text,
            )

    def _start_sweeper(self) -> None:
        if not self._background or self._sweeper is not None:
            return
        self._sweeper = threading.Thread(target=self._sweep_while_active, daemon=True)
        self._sweeper.name = "kafka-error-log"
        self._sweeper.start()

    def _sweep_while_active(self) -> None:
        while True:
            time.sleep(1.0)
            self.sweep()
            with self._lock:
                if not self._active:
                    self._sweeper = None
                    return


#: The one per process: the same error heard by several clients, or by `error_cb` and the log
#: of one, is one error.
CLIENT_ERRORS = RepeatedErrors(log)


class _LibrdkafkaLogger:
    """librdkafka's `logger`: its log lines through `RepeatedErrors` (confluent-kafka calls
    `log(level, "%s [%s] %s", facility, client name, text)`)."""

    def log(self, level: int, _fmt: str, facility: str, _client: str, text: str) -> None:
        if level >= logging.WARNING:
            CLIENT_ERRORS.report(level, text, f"librdkafka {facility}: ")
        else:
            librdkafka_log.log(level, "%s: %s", facility, text)


def new_client(factory: Callable[[dict[str, Any]], Client], config: dict[str, Any]) -> Client:
    """A librdkafka client logging through ours; a setting librdkafka refuses becomes a
    ConfigError naming it."""
    config.setdefault("logger", _LibrdkafkaLogger())
    try:
        return factory(config)
    except confluent_kafka.KafkaException as exc:
        raise ConfigError(f"kafka.librdkafka: {exc.args[0].str()}") from exc


def log_client_error(err: confluent_kafka.KafkaError) -> None:
    """librdkafka's `error_cb`: client-level errors (broker down, auth) are mostly transient and
    retried by librdkafka; a fatal one means the client cannot go on."""
    if err.fatal():
        log.error("fatal Kafka client error: %s", err)
    else:
        CLIENT_ERRORS.report(logging.WARNING, err.str(), "Kafka client error: ")


def close_within(close: Callable[[], None], seconds: float, what: str) -> bool:
    """`close()`, left to finish on a daemon thread of its own after `seconds` (librdkafka's
    closes have no deadline: leaving a group or destroying a client waits for brokers that
    may be frozen, and a stop may not). True when it finished in time; what it raised then
    is raised here."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            close()
        except BaseException as exc:  # raised in the caller's thread, whatever it is
            raised.append(exc)

    thread = threading.Thread(target=run, name=what.replace(" ", "-"), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        log.warning("could not %s within %.0f s; leaving it to finish", what, seconds)
        return False
    if raised:
        raise raised[0]
    return True
