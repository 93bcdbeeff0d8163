"""Serving /metrics (Prometheus text format) and the health probes for one process.

The registry is injected, so tests and several components in one process use their own. A check
is a callable returning (ok, details); a probe answers 200 or 503 with the details as JSON:

- `/readyz` (and `/healthz`, its older name): the readiness check, e.g. a poller is not degraded;
- `/livez`: the liveness check, by default 200 as long as the process serves. It must not fail
  for what a restart cannot mend (an unreachable site), or an orchestrator restarts in a loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from connector.errors import ConfigError

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def always_live() -> tuple[bool, dict[str, Any]]:
    """The default liveness check: answering at all is alive."""
    return True, {}


class OpsServer:
    """A background HTTP server for /metrics, /readyz, /healthz and /livez; `port=0` picks a
    free port. `health` is the readiness check, `live` the liveness check."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: HealthCheck,
        host: str = "0.0.0.0",
        port: int = 0,
        live: HealthCheck = always_live,
    ) -> None:
        handler = _handler(registry, {"/readyz": health, "/healthz": health, "/livez": live})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics_port: cannot serve /metrics on {host}:{port}: {exc.strerror}"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ops-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, probes: dict[str, HealthCheck]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path in probes:
                healthy, details = probes[path]()
                body = json.dumps({"healthy": healthy, **details}, default=str).encode()
                self._send(200 if healthy else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /readyz or /livez\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not worth a log line each."""

    return Handler
