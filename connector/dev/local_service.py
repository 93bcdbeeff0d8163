"""What the throwaway local services (LocalPostgres, LocalRabbit, LocalKafka) share: running a
program as the service's system user when we are root, starting a process in a group of its
own with its output in a log, stopping that group by pid, and the tail of a log for an error.

`LocalService` is the `with` protocol of the first two: entering starts the service, leaving
removes it (process and files).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Self


class LocalService(ABC):
    """A throwaway service: `start()` returns its URL, `remove()` ends it and deletes its files."""

    @abstractmethod
    def start(self) -> str: ...

    @abstractmethod
    def remove(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()


class SystemUser:
    """The system user a Debian package made for its server (`postgres`, `rabbitmq`): the
    servers refuse to run as root, or should not, so as root we run them as that user."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: False when we are not root: the programs then run as ourselves.
        self.active = os.geteuid() == 0

    def argv(self, argv: list[str]) -> list[str]:
        """`argv`, run as this user when we are root."""
        return ["runuser", "-u", self.name, "--", *argv] if self.active else argv

    def own(self, root: Path) -> None:
        """Give `root` and everything below it to this user (when we are root)."""
        if not self.active:
            return
        entry = pwd.getpwnam(self.name)
        for path in (root, *root.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)


def spawn_group(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new process group (so `signal_group` reaches whatever it
    starts), its output appended to `log`, no stdin."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group `pid` leads; nothing if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the group `proc` leads and wait up to `timeout` s for `proc`, then SIGKILL. The
    group is killed at the end either way: a child (a VM its script started) may outlive it."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    signal_group(proc.pid, signal.SIGKILL)


def log_tail(label: str, paths: Iterable[Path], lines: int) -> str:
    """The last `lines` lines of the logs at `paths` (those that exist), on one line after
    `label`, for an error message; "" when there are none."""
    found: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            found += path.read_text(errors="replace").splitlines()[-lines:]
    return f"{label}: " + " | ".join(found[-lines:]) if found else ""
