"""Running a simulated site: the HTTP server on loopback, `start_sim` and `run_sim`.

One port serves everything: Keystone under `/identity` (and discovery at `/`), Nova under
`/compute`, Cinder under `/volume`, Neutron under `/networking`, the control API under `/_sim/`.
The stdlib threading HTTP server with keep-alive meets the scale figures in docs/sim.md, so the
sim needs no web framework. `start_sim` runs a site on a background thread (tests, the demo);
`run_sim` runs one or many in the foreground until SIGTERM or SIGINT (`cascade-connector sim`),
each site on its own port.
"""

from __future__ import annotations

import email.utils
import errno
import gc
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml

from connector.dev.sim.api import ApiError, Request, Response, compute_fault, json_response, reason
from connector.dev.sim.behaviour import Jobs
from connector.dev.sim.cinder import Cinder
from connector.dev.sim.control import Control, Fault, Faults, Stats
from connector.dev.sim.errors import SimError
from connector.dev.sim.keystone import DOMAIN, REGION, USERNAME, Keystone
from connector.dev.sim.model import FLOATINGIP, NETWORK, PORT, ROUTER, SERVER, VOLUME
from connector.dev.sim.neutron import Neutron
from connector.dev.sim.notify import SiteNotifier
from connector.dev.sim.nova import Nova
from connector.dev.sim.store import Site
from connector.ops.signals import stop_on_signals

log = logging.getLogger(__name__)

ChangedSince = Literal["accept", "reject"]


class App:
    """Routes a request to a service, applies injected faults, records stats."""

    def __init__(
        self,
        site: Site,
        base_url: str,
        *,
        password: str,
        token_ttl: float,
        neutron_changed_since: ChangedSince,
    ) -> None:
        self.site = site
        self.base_url = base_url
        self.stats = Stats()
        self.faults = Faults()
        self.jobs = Jobs()
        self.stopping = threading.Event()
        self.keystone = Keystone(site, base_url, password, token_ttl)
        self.nova = Nova(site, self.keystone, base_url)
        self.cinder = Cinder(site, self.keystone, base_url)
        self.neutron = Neutron(site, self.keystone, base_url, neutron_changed_since == "accept")
        info = {
            "site": site.name,
            "seed": site.seed,
            "url": base_url,
            "auth_url": self.keystone.auth_url,
            "projects": [{"id": pid, "name": name} for pid, name in site.projects],
            "neutron_changed_since": neutron_changed_since,
            "token_ttl": token_ttl,
        }
        self.control = Control(
            site, self.stats, self.faults, self.jobs, info, self.keystone.revoke_all
        )
        self._routes: list[tuple[str, Callable[[Request, str], Response]]] = [
            ("/identity", self.keystone.handle),
            ("/compute", self.nova.handle),
            ("/volume", self.cinder.handle),
            ("/networking", self.neutron.handle),
        ]

    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/_sim/"):
            return self.control.handle(request)
        fault = self.faults.matching(request.path)
        try:
            response = self._route(request) if fault is None else self._faulty(fault, request)
        except ApiError as exc:
            response = exc.response()
        except Exception:
            # A bug in the sim must answer like a broken service, not drop the connection.
            log.exception("sim: %s %s failed", request.method, request.path)
            response = json_response(500, compute_fault(500, "Unexpected error in the sim."))
        response.headers.setdefault("x-openstack-request-id", f"req-{uuid.uuid4()}")
        self.stats.record(request, response)
        return response

    def _faulty(self, fault: Fault, request: Request) -> Response:
        if fault.delay:
            self.stopping.wait(fault.delay)
        if fault.status is None:
            return self._route(request)
        return json_response(fault.status, compute_fault(fault.status, "Injected fault."))

    def _route(self, request: Request) -> Response:
        if request.path in ("", "/"):
            return self.keystone.handle(request, "")
        for prefix, handle in self._routes:
            if request.path == prefix or request.path.startswith(prefix + "/"):
                return handle(request, request.path[len(prefix) :])
        raise ApiError(404, compute_fault(404, "The resource could not be found."))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small JSON answers on keep-alive connections: Nagle would add 40 ms to each.
    disable_nagle_algorithm = True
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        app = self.server.app
        request = Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            base_url=app.base_url,
        )
        response = app.dispatch(request)
        self.send_response(response.status, reason(response.status))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sim %s: " + format, self.server.app.site.name, *args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header, on the site's clock (`--clock-skew`)."""
        when = self.server.app.site.now() if timestamp is None else timestamp
        return email.utils.formatdate(when, usegmt=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many pollers and tests connect at once; the default backlog of 5 refuses some.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app_factory: Callable[[int], App]) -> None:
        super().__init__(address, _Handler)
        self.app = app_factory(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request (a stopped poller, a test's timeout) is no fault of
        # the sim: a debug line, not socketserver's traceback on stderr.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):  # BrokenPipe, ConnectionReset, ConnectionAborted
            log.debug("sim %s: client %s went away: %r", self.app.site.name, client_address, exc)
            return
        super().handle_error(request, client_address)


class RunningSim:
    """A simulated site serving on a background thread. `stop()` (or leaving a `with`) ends it.

    Attributes: `site` (the state, for in-process inspection), `app`, `url`
    (`http://host:port`), `auth_url` (Keystone, for clouds.yaml), `cloud` (the cloud name).
    """

    def __init__(
        self, server: _Server, thread: threading.Thread, notifier: SiteNotifier | None = None
    ) -> None:
        self._server = server
        #: publishes the site's changes to a message bus (`start_sim(notify=...)`), or None
        self.notifier = notifier
        self._thread = thread
        self.app = server.app
        self.site = server.app.site
        self.url = server.app.base_url
        self.auth_url = server.app.keystone.auth_url
        self.cloud = self.site.name

    def __repr__(self) -> str:
        return f"<RunningSim {self.cloud} at {self.url} {self.site.counts()}>"

    def clouds_yaml_entry(self) -> dict[str, Any]:
        """The clouds.yaml entry (`clouds: {<site>: <this>}`) that reaches this site."""
        return {
            "auth": {
                "auth_url": self.auth_url,
                "username": USERNAME,
                "password": self.app.keystone.password,
                "project_name": self.site.projects[0][1],
                "user_domain_name": DOMAIN["name"],
                "project_domain_name": DOMAIN["name"],
            },
            "region_name": REGION,
            "identity_api_version": 3,
            "interface": "public",
        }

    def write_clouds_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Add or replace this site's entry in a clouds.yaml, keeping the other clouds."""
        return write_clouds_yaml(Path(path), self.cloud, self.clouds_yaml_entry())

    def stop(self) -> None:
        """Stop background churn and storms, then the server; waits for both."""
        self.app.stopping.set()
        self.app.jobs.stop()
        if self.notifier is not None:
            self.notifier.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> RunningSim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def default_counts(servers: int, volumes: int, ports: int) -> dict[str, int]:
    """Networks, routers and floating IPs in proportion to the three main kinds."""
    networks = max(1, ports // 50)
    return {
        SERVER: servers,
        VOLUME: volumes,
        PORT: ports,
        NETWORK: networks,
        ROUTER: max(1, networks // 4),
        FLOATINGIP: servers // 10,
    }


def start_sim(
    site: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    servers: int = 100,
    volumes: int = 100,
    ports: int = 100,
    networks: int | None = None,
    routers: int | None = None,
    floatingips: int | None = None,
    seed: int = 0,
    token_ttl: float = 3600.0,
    neutron_changed_since: ChangedSince = "reject",
    password: str = "password",
    notify: str | None = None,
    notify_loss: float = 0.0,
    clock_skew: float = 0.0,
) -> RunningSim:
    """Populate a site and serve it on a background thread; returns once it answers.

    `port=0` picks a free port (read it from `.url`). The same seed and counts give the same
    ids, names, statuses and relations. `networks`, `routers` and `floatingips` default to
    `default_counts`. `token_ttl` is the Keystone token lifetime in seconds.
    `neutron_changed_since` is "reject" (400, as deployments with filter validation answer) or
    "accept" (honoured as `updated_at >= changed_since`). `notify` is a RabbitMQ transport URL
    the site sends the services' notifications to (connector.dev.sim.notify), dropping the share
    `notify_loss` of them. `clock_skew` puts the site's clock that many seconds ahead of the
    machine's (negative: behind): its timestamps and its `Date` headers. Raises SimError if the
    address is taken or the arguments are wrong.
    """
    if neutron_changed_since not in ("accept", "reject"):
        raise SimError(
            f"neutron_changed_since must be accept or reject, got {neutron_changed_since!r}"
        )
    if token_ttl <= 0:
        raise SimError(f"token_ttl must be positive, got {token_ttl}")
    counts = default_counts(servers, volumes, ports)
    for kind, given in ((NETWORK, networks), (ROUTER, routers), (FLOATINGIP, floatingips)):
        if given is not None:
            counts[kind] = given
    if any(n < 0 for n in counts.values()):
        raise SimError(f"object counts must not be negative, got {counts}")
    state = Site(site, seed, clock_skew)
    started = time.monotonic()
    state.populate(counts)
    log.info("sim %s: %d objects in %.1f s", site, sum(counts.values()), time.monotonic() - started)

    def make_app(bound_port: int) -> App:
        return App(
            state,
            f"http://{host}:{bound_port}",
            password=password,
            token_ttl=token_ttl,
            neutron_changed_since=neutron_changed_since,
        )

    try:
        server = _Server((host, port), make_app)
    except OSError as exc:
        hint = " (address in use)" if exc.errno == errno.EADDRINUSE else ""
        raise SimError(f"cannot listen on {host}:{port}{hint}: {exc.strerror}") from exc
    notifier = None
    if notify is not None:
        notifier = SiteNotifier(state, notify, notify_loss, seed)
        notifier.start()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"sim-{site}", daemon=True
    )
    thread.start()
    return RunningSim(server, thread, notifier)


def run_sim(
    sites: Sequence[str],
    listen: str,
    *,
    clouds_yaml: Path | None = None,
    echo: Callable[[str], None] = print,
    seed: int = 0,
    **options: Any,
) -> None:
    """`cascade-connector sim`: serve one or more sites in the foreground until SIGTERM or
    SIGINT.

    `listen` is `HOST:PORT`. Every site is a whole site of its own (its own Keystone, catalog,
    state and port) that shares only this process: the i-th listens on PORT+i (or on a port the
    kernel picks when PORT is 0) with seed `seed`+i, so 100 sites fit a small machine without
    100 interpreters. `options` are `start_sim`'s keywords, the same for every site. Writes the
    sites' clouds.yaml entries to `clouds_yaml` when given, once every site answers.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise SimError(f"--listen expects HOST:PORT, got {listen!r}")
    if not sites or len(set(sites)) != len(sites):
        raise SimError(f"--site names must be given and distinct, got {list(sites)}")
    stop = threading.Event()
    port = int(port_text)
    with stop_on_signals(stop.set), ExitStack() as running:
        sims = [
            running.enter_context(
                start_sim(site, host=host, port=port + i if port else 0, seed=seed + i, **options)
            )
            for i, site in enumerate(sites)
        ]
        # The population lives as long as the process: keep the collector from rescanning
        # it, which otherwise stalls a page now and then by tens of milliseconds.
        gc.freeze()
        if clouds_yaml is not None:
            write_clouds(clouds_yaml, {sim.cloud: sim.clouds_yaml_entry() for sim in sims})
            echo(f"wrote {len(sims)} cloud(s) to {clouds_yaml}")
        for sim in sims:
            echo(
                f"site {sim.cloud} serving on {sim.url} (auth_url {sim.auth_url}); "
                f"{sim.site.counts()}"
            )
        stop.wait()
        echo(f"{len(sims)} site(s) stopping")


def write_clouds_yaml(path: Path, cloud: str, entry: dict[str, Any]) -> Path:
    """Set `clouds.<cloud>` in the clouds.yaml at `path` (created if missing), atomically."""
    return write_clouds(path, {cloud: entry})


def write_clouds(path: Path, entries: Mapping[str, dict[str, Any]]) -> Path:
    """Set `clouds.<name>` for every entry in the clouds.yaml at `path` (created if missing),
    keeping the other clouds, in one atomic write."""
    try:
        existing = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError) as exc:
        raise SimError(f"cannot read {path}: {exc}") from exc
    doc = existing if isinstance(existing, dict) else {}
    clouds = doc.get("clouds")
    doc["clouds"] = {**(clouds if isinstance(clouds, dict) else {}), **entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(doc, fh, default_flow_style=False, sort_keys=False)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SimError(f"cannot write {path}: {exc}") from exc
    return path
