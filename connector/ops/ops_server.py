"""Serving /metrics (Prometheus text format) and the health probes for one process.

The registry is injected, so tests and several components in one process use their own. A check
is a callable returning (ok, details); a probe answers 200 or 503 with the details as JSON,
redacted (`connector.redact`: an error text may quote a URL with its password):

- `/readyz` (and `/healthz`, its older name): the readiness check, e.g. a poller is not degraded;
- `/livez`: the liveness check, by default 200 as long as the process serves. It must not fail
  for what a restart cannot mend (an unreachable site), or an orchestrator restarts in a loop.

The server listens on one address (`metrics_host`, loopback by default), gives each connection
`timeout` seconds per read or write, and serves at most `max_connections` at once: a client that
connects and says nothing, or a thousand that do, hold a thread each for seconds at most and
never the process's memory.
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
from connector.redact import redact

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]

#: Seconds a connection may take per read or write before it is closed.
CONNECTION_TIMEOUT = 10.0
#: Connections served at once; more are closed at once (a scrape and probes need a few).
MAX_CONNECTIONS = 16


def always_live() -> tuple[bool, dict[str, Any]]:
    """The default liveness check: answering at all is alive."""
    return True, {}


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `slots` at once; a connection over the bound is closed
    without an answer."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        slots: int,
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(slots)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class OpsServer:
    """A background HTTP server for /metrics, /readyz, /healthz and /livez on `host`; `port=0`
    picks a free port. `health` is the readiness check, `live` the liveness check."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: HealthCheck,
        host: str = "127.0.0.1",
        port: int = 0,
        live: HealthCheck = always_live,
        timeout: float = CONNECTION_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        handler = _handler(
            registry, {"/readyz": health, "/healthz": health, "/livez": live}, timeout
        )
        try:
            self._server = _BoundedServer((host, port), handler, max_connections)
        except (OSError, OverflowError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"metrics_host/metrics_port: cannot serve /metrics on {host}:{port}: {why}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ops-http", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

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
    registry: CollectorRegistry, probes: dict[str, HealthCheck], timeout: float
) -> type[BaseHTTPRequestHandler]:
    handler_timeout = timeout

    class Handler(BaseHTTPRequestHandler):
        # StreamRequestHandler applies it to the socket: each read and write (a request that
        # times out is dropped by handle_one_request).
        timeout = handler_timeout

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path in probes:
                healthy, details = probes[path]()
                doc = redact({"healthy": healthy, **details})
                body = json.dumps(doc, default=str).encode()
                self._send(200 if healthy else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /readyz or /livez\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def handle(self) -> None:
            try:
                super().handle()
            except ConnectionError:
                # The client went away: nothing to answer, and no traceback on stderr.
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not worth a log line each."""

    return Handler
