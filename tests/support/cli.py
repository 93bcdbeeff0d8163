"""The CLI as a user runs it: a real process."""

from __future__ import annotations

import os
import subprocess
import sys

CLI = [sys.executable, "-m", "connector"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
