"""The local services' shared process handling: a group started, stopped whole, its log."""

from __future__ import annotations

import os
from pathlib import Path

from connector.dev.local_service import SystemUser, log_tail, spawn_group, stop_group
from tests.support import wait_for


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_group_ends_the_leader_and_what_it_started(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    # A script that starts a child and ignores SIGTERM itself, as the Erlang VM's script may.
    script = f"trap '' TERM; sleep 60 & echo $! > {child_pid}; echo started; wait"
    proc = spawn_group(["sh", "-c", script], tmp_path / "out.log")
    wait_for(lambda: child_pid.exists() and child_pid.read_text().strip(), 10, "the child")
    child = int(child_pid.read_text())
    assert os.getpgid(child) == proc.pid, "the child is in the leader's group"
    stop_group(proc, timeout=0.5)
    assert proc.returncode is not None
    wait_for(lambda: not _alive(child), 10, "the child to be gone")
    assert log_tail("log", [tmp_path / "out.log", tmp_path / "missing.log"], 5) == "log: started"
    assert log_tail("log", [tmp_path / "missing.log"], 5) == ""


def test_system_user_wraps_argv_only_as_root() -> None:
    user = SystemUser("postgres")
    argv = user.argv(["initdb", "-D", "x"])
    if os.geteuid() == 0:
        assert argv == ["runuser", "-u", "postgres", "--", "initdb", "-D", "x"]
    else:
        assert argv == ["initdb", "-D", "x"]
