"""The demo's child processes: started with their output in log files, all stopped on exit.

Every component runs as the real `cascade-connector` command a user would run, so the demo
exercises the CLI, the settings and the signals exactly as deployed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import yaml

from connector.errors import ConnectorError


class DemoError(ConnectorError):
    """A part of the demo did not come up, or the sink did not converge."""


class Processes:
    """Children of the demo; `stop_all` ends them (SIGTERM, then SIGKILL after a grace time)."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.env = dict(env)
        self._children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self,
        name: str,
        *args: str,
        script: Path | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Run `cascade-connector <args>` (or the Python `script` with `args`: the benchmarks'
        own agents) with its output in `<log_dir>/<name>.log`; with `python`, that interpreter
        (another checkout's venv, for a benchmark's before-and-after) instead of this one; `env`
        adds to the environment (a secret goes there, not on the command line `ps` shows)."""
        log = (self.log_dir / f"{name}.log").open("wb")
        program = [str(script)] if script is not None else ["-m", "connector"]
        proc = subprocess.Popen(
            [python or sys.executable, *program, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
        )
        self._children.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        """Raise DemoError naming a child that exited, with the tail of its log."""
        for name, proc, _log in self._children:
            if proc.poll() is not None:
                raise DemoError(
                    f"{name} exited with status {proc.returncode}; last lines of its log:\n"
                    + log_tail(self.log_dir / f"{name}.log")
                )

    def children(self, prefix: str) -> list[subprocess.Popen[bytes]]:
        """The running children whose name starts with `prefix`."""
        return [proc for name, proc, _log in self._children if name.startswith(prefix)]

    def stop(self, prefix: str, grace: float = 15.0) -> None:
        """Stop the children whose name starts with `prefix`, as `stop_all` does."""
        chosen = [child for child in self._children if child[0].startswith(prefix)]
        self._children = [child for child in self._children if child not in chosen]
        _stop(chosen, grace)

    def stop_all(self, grace: float = 15.0) -> None:
        _stop(self._children, grace)
        self._children.clear()


def _stop(children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]], grace: float) -> None:
    for _name, proc, _log in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for _name, proc, log in children:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_json(url: str, body: Any = None, timeout: float = 30.0) -> Any:
    """GET (or POST `body` as JSON) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = Request(url, data=data, headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def http_text(url: str, timeout: float = 10.0) -> str:
    with urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def wait_until(
    what: str, ready: Callable[[], object], timeout: float, check: Callable[[], None]
) -> None:
    """Wait for `ready()` (connection errors count as not ready), calling `check` between
    tries so a crashed child is reported at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (URLError, ConnectionError, TimeoutError, OSError):
            pass
        check()
        if time.monotonic() > deadline:
            raise DemoError(f"{what} not ready within {timeout:.0f} s")
        time.sleep(0.2)


def logged_port(log_file: Path) -> int | None:
    """The port a child serves /metrics on, from its log line (it asked the kernel for one)."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return None
    found = _SERVING.search(text)
    return int(found.group(1)) if found else None


_SERVING = re.compile(r"serving /metrics[^\n]* on port (\d+)")


def sim_url(clouds_yaml: Path, site: str) -> str:
    """The base URL of a simulated site, from the clouds.yaml entry it wrote."""
    doc = yaml.safe_load(clouds_yaml.read_text())
    parts = urlsplit(doc["clouds"][site]["auth"]["auth_url"])
    return f"{parts.scheme}://{parts.netloc}"


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env.update(extra)
    return env
