"""The helpers every long-running command shares: stopping on a signal, cleanup that never
hides the error it cleans up after (and the loops that use it)."""

from __future__ import annotations

import gc
import os
import platform
import signal
import subprocess
import sys
import threading

import pytest

from connector.errors import KafkaError
from connector.kafka import Message
from connector.ops.cleanup import cleanup_after
from connector.ops.heap import GC_THRESHOLD, collect_less, limit_malloc_arenas
from connector.ops.signals import Interrupted, interrupt, stop_on_signals
from tests.support import wait_for
from tests.support.fake_group import FakeDeadLetters, FakeGroupConsumer, top_consumer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_calls_stop_and_the_old_handler_comes_back(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    stop = threading.Event()
    with stop_on_signals(stop.set):
        os.kill(os.getpid(), sig)
        wait_for(stop.is_set, timeout=5, what=f"{sig.name} to set the event")
    assert signal.getsignal(sig) is before


def test_interrupt_unwinds_like_ctrl_c() -> None:
    unwound = []
    with pytest.raises(KeyboardInterrupt), stop_on_signals(interrupt):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(lambda: False, timeout=5, what="SIGTERM to interrupt")
        finally:
            unwound.append(True)
    assert unwound == [True]
    assert issubclass(Interrupted, KeyboardInterrupt)


def test_outside_the_main_thread_no_handler_is_installed() -> None:
    seen: list[object] = []

    def body() -> None:
        with stop_on_signals(lambda: None):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert seen == [signal.getsignal(signal.SIGTERM)]


def test_cleanup_after_an_error_keeps_the_error_and_runs_every_step() -> None:
    ran: list[str] = []

    def failing_close() -> None:
        ran.append("close")
        raise RuntimeError("close failed")

    with (
        pytest.raises(KafkaError, match="commit failed"),
        cleanup_after(failing_close, lambda: ran.append("flush")),
    ):
        raise KafkaError("commit failed")
    assert ran == ["close", "flush"]


def test_cleanup_after_success_raises_the_first_step_error() -> None:
    ran: list[str] = []

    def fail(what: str) -> None:
        ran.append(what)
        raise RuntimeError(f"{what} failed")

    with (
        pytest.raises(RuntimeError, match="close failed"),
        cleanup_after(lambda: fail("close"), lambda: fail("flush")),
    ):
        ran.append("body")
    assert ran == ["body", "close", "flush"]


class BrokenGroup(FakeGroupConsumer):
    """A group member whose broker went away, and whose close then fails too."""

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        raise KafkaError("fatal consumer error: the broker is gone")

    def close(self) -> None:
        raise RuntimeError("close failed: not connected")


def test_top_consumer_reports_why_its_loop_ended_not_the_close_that_failed_after() -> None:
    group = BrokenGroup([("site.a", 0)])
    dead_letters = FakeDeadLetters(group.journal)
    loop = top_consumer(
        group, dead_letters=dead_letters, decode=lambda _msg, _site: pytest.fail("no record")
    )
    with pytest.raises(KafkaError, match="the broker is gone"):
        loop.run()
    assert dead_letters.closed


def test_collect_less_freezes_what_lives_and_collects_the_young_less_often_then_undoes_it() -> None:
    before = gc.get_threshold()
    with collect_less():
        assert gc.get_threshold() == (GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


_ARENAS_AFTER_THREADS = """
import ctypes, sys, threading
from connector.ops.heap import limit_malloc_arenas
if sys.argv[1] == "limit":
    limit_malloc_arenas()
barrier = threading.Barrier(8)
def allocate() -> None:
    barrier.wait()
    for _ in range(200):
        [bytes(2000) for _ in range(200)]
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS_AFTER_THREADS, mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return done.stderr.count("Arena ")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas only")
def test_limit_malloc_arenas_keeps_threads_to_two_arenas() -> None:
    assert _arenas("default") > 2, "threads allocating at once get arenas of their own"
    assert _arenas("limit") <= 2


def test_limit_malloc_arenas_leaves_malloc_arena_max_to_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not limit_malloc_arenas()
