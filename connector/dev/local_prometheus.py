"""A throwaway Prometheus server for tests: Debian's `prometheus` binary, on loopback.

It scrapes the given targets and evaluates the given rule files (the shipped
deploy/prometheus/alerts.yml) at a short interval, with a data directory of its own that
`remove` deletes. `alerts()` reads what its rules say now (pending and firing), from the HTTP
API. The binary comes from scripts/ensure-deploy-tools.sh (unpacked from Debian's package, which
would start a system Prometheus if installed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from connector.dev import free_port
from connector.dev.local_service import LocalService, log_tail, spawn_group, stop_group
from connector.errors import ConnectorError


class LocalPrometheusError(ConnectorError):
    """The throwaway server could not be started or did not answer."""

    exit_code = 3


class LocalPrometheus(LocalService):
    """One throwaway server. `start()` returns its URL (`http://127.0.0.1:PORT`)."""

    def __init__(
        self,
        binary: Path,
        rule_files: Sequence[Path],
        jobs: Mapping[str, Sequence[str]],
        interval: float = 1.0,
    ) -> None:
        """`jobs`: job name -> its targets (HOST:PORT); `interval`: seconds between scrapes and
        between rule evaluations."""
        self.binary = binary
        self.rule_files = list(rule_files)
        self.jobs = {name: list(targets) for name, targets in jobs.items()}
        self.interval = interval
        self.port = free_port()
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self._proc is not None and self._proc.poll() is None else "stopped"
        return f"LocalPrometheus(port={self.port}, {state}, jobs={self.jobs})"

    def start(self, timeout: float = 60.0) -> str:
        """Write the configuration, start the server, wait until it is ready."""
        self.root = Path(tempfile.mkdtemp(prefix="cascade-prometheus-"))
        config = self.root / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write it.
        every = f"{self.interval:g}s"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": every, "evaluation_interval": every},
                    "rule_files": [str(p.resolve()) for p in self.rule_files],
                    "scrape_configs": [
                        {"job_name": name, "static_configs": [{"targets": targets}]}
                        for name, targets in self.jobs.items()
                    ],
                },
                indent=2,
            )
        )
        self._proc = spawn_group(
            [
                str(self.binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.root / "prometheus.log",
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self._proc.poll() is not None else f"not ready in {timeout:g} s"
                tail = log_tail("log", [self.root / "prometheus.log"], 10)
                self.remove()
                raise LocalPrometheusError(f"prometheus {why}; {tail}")
            time.sleep(0.2)
        return self.url

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now: `{"labels": {"alertname", ...}, "state", ...}`."""
        return list(self._api("alerts")["alerts"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        encoded = urllib.parse.urlencode({"query": expr})
        return list(self._api(f"query?{encoded}")["result"])

    def remove(self) -> None:
        """Stop the server and delete its files."""
        if self._proc is not None:
            stop_group(self._proc, timeout=15)
            self._proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _api(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", timeout=10) as response:
            doc = json.loads(response.read())
        if doc.get("status") != "success":
            raise LocalPrometheusError(f"prometheus /api/v1/{path}: {doc}")
        data: dict[str, Any] = doc["data"]
        return data

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False
