"""A throwaway real OpenStack for tests: Keystone, cinder-api and neutron-server, from their own
Python packages.

`scripts/ensure-openstack.sh` installs the pinned releases (and gunicorn) once into venvs of
their own outside the repository (Keystone and Cinder share one, Neutron has its own); this
module starts them on free loopback ports with SQLite databases in a temporary directory
(Neutron: a throwaway PostgreSQL cluster of its own, `connector.dev.local_postgres`), each
served by gunicorn as a process group of its own and stopped by its pid. Keystone issues fernet
tokens and is bootstrapped by `keystone-manage bootstrap`; its catalog has `identity`,
`block-storage` and `volumev3` in REGION (public, internal and admin interfaces, as DevStack
makes them), and `block-storage` and `volumev3` in a second region, OTHER_REGION, where only the
internal endpoints reach cinder-api (the public and admin ones are Keystone's URL, which answers
404 to a volume listing): a test tells from the outcome which region and interface a client
chose. cinder-api checks tokens with keystonemiddleware against that Keystone; there is no bus
(oslo.messaging's in-memory `fake://` transport) and no scheduler or volume service, so created
volumes stay `creating` until an admin action (`os-reset_status`) changes them.

neutron-server (`start_neutron`, after `start`) is the API alone, as `network` in REGION's
catalog: ML2 with flat and vxlan type drivers and no mechanism driver, the `router` service
plugin, no agents, no bus and no notifications to Nova, so ports stay `DOWN`. Its migration
`d553edeb540f` (29.0.0) is MySQL-only (`ALTER TABLE tags CONVERT TO CHARACTER SET`), so
`neutron-db-manage upgrade heads` fails on PostgreSQL: the schema is made from Neutron's models
(`neutron.db.migration.models.head.get_metadata().create_all()`, as Neutron's own tests do) and
stamped at the heads.

The services parse `sys.argv` with oslo.config when they are imported and would reject
gunicorn's own flags: a small WSGI module written beside their configuration sets a clean
`sys.argv` (with the config files) before importing each service's WSGI application.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.dev import free_port
from connector.dev.local_postgres import LocalPostgres
from connector.dev.local_service import LocalService, log_tail, spawn_group, stop_group
from connector.errors import ConnectorError

REGION = "RegionOne"
#: The second region of the catalog: cinder-api at its internal interface alone.
OTHER_REGION = "RegionTwo"
#: The admin's and the service user's password (a throwaway Keystone on loopback).
PASSWORD = "cascade-test-secret"
#: Seconds keystonemiddleware trusts a validated token without asking Keystone again: short,
#: so that a revoked token is refused soon (the default is 300 s).
TOKEN_CACHE_SECONDS = 2
#: Repository root, for the install script.
_ROOT = Path(__file__).resolve().parents[2]

_WSGI = """\
import sys

sys.argv = {argv!r}
from {module} import application  # noqa: E402
"""

#: Neutron's schema from its models, stamped at the heads by `neutron-db-manage` afterwards.
_NEUTRON_SCHEMA = """\
import sys

import sqlalchemy
from neutron.db.migration.models import head

engine = sqlalchemy.create_engine(sys.argv[1])
head.get_metadata().create_all(engine)
engine.dispose()
"""


class LocalOpenStackError(ConnectorError):
    """Keystone, cinder-api or neutron-server could not be installed, configured, started or
    stopped."""

    exit_code = 3


@dataclass(frozen=True)
class Installed:
    """The bin directories of the services' venvs."""

    #: Keystone's and cinder-api's
    openstack: Path
    #: neutron-server's
    neutron: Path


def ensure_installed() -> tuple[Installed, bool]:
    """The services' venvs, and whether one was installed just now by
    `scripts/ensure-openstack.sh` because it was missing (once; about half a minute each with a
    warm pip cache: `make openstack`, which `make test` runs first, does it outside any test)."""
    script = _ROOT / "scripts" / "ensure-openstack.sh"
    try:
        done = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=1800, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalOpenStackError(f"{script.name} failed: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise LocalOpenStackError(f"{script.name} exited with {done.returncode}: {tail}")
    *_, openstack, neutron = done.stdout.strip().splitlines()
    return Installed(Path(openstack), Path(neutron)), "installing" in done.stderr


@dataclass(frozen=True)
class Endpoints:
    """Where the running services answer."""

    #: Keystone's v3 API (`http://127.0.0.1:<port>/v3`)
    auth_url: str
    #: cinder-api's root (`http://127.0.0.1:<port>`)
    cinder_url: str
    #: neutron-server's root (`http://127.0.0.1:<port>`)
    neutron_url: str


class LocalOpenStack(LocalService):
    """Keystone and cinder-api, and neutron-server once `start_neutron()` is called. `start()`
    returns Keystone's auth URL; `remove()` ends every process (by pid), Neutron's PostgreSQL
    included, and deletes their files. `stop_keystone()` and `start_keystone()` restart
    Keystone alone (same port, same database and keys: tokens issued before stay valid)."""

    def __init__(self, installed: Installed | None = None) -> None:
        self._installed = installed
        self.root: Path | None = None
        self.keystone_port = free_port()
        self.cinder_port = free_port()
        self.neutron_port = free_port()
        self._keystone: subprocess.Popen[bytes] | None = None
        self._cinder: subprocess.Popen[bytes] | None = None
        self._neutron: subprocess.Popen[bytes] | None = None
        self._neutron_db: LocalPostgres | None = None

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(
            f"http://127.0.0.1:{self.keystone_port}/v3",
            f"http://127.0.0.1:{self.cinder_port}",
            f"http://127.0.0.1:{self.neutron_port}",
        )

    def __repr__(self) -> str:
        state = f"running in {self.root}" if self.root else "stopped"
        ports = (self.keystone_port, self.cinder_port, self.neutron_port)
        return "LocalOpenStack(keystone={}, cinder={}, neutron={}, {})".format(*ports, state)

    def start(self, timeout: float = 120.0) -> str:
        if self.root is not None:
            raise LocalOpenStackError(f"{self!r} is already started")
        self._installed = self._installed or ensure_installed()[0]
        bin_dir = self._installed.openstack
        self.root = root = Path(tempfile.mkdtemp(prefix="cascade-openstack-"))
        try:
            self._configure(root)
            self._keystone_manage("db_sync")
            for keys in ("fernet_setup", "credential_setup"):
                self._keystone_manage(keys, "--keystone-user", "root", "--keystone-group", "root")
            public = self.endpoints.auth_url.removesuffix("/v3")
            self._keystone_manage(
                "bootstrap",
                "--bootstrap-password",
                PASSWORD,
                "--bootstrap-region-id",
                REGION,
                "--bootstrap-admin-url",
                public,
                "--bootstrap-internal-url",
                public,
                "--bootstrap-public-url",
                public,
            )
            self._start_keystone(timeout)
            self._register_cinder()
            self._run(
                bin_dir / "cinder-manage", "--config-file", str(root / "cinder.conf"), "db", "sync"
            )
            self._cinder = self._serve("cinder", self.cinder_port)
            self._wait_answers(self._cinder, "cinder", self.endpoints.cinder_url + "/", timeout)
        except BaseException:
            self.remove()
            raise
        return self.endpoints.auth_url

    def start_neutron(self, timeout: float = 120.0) -> str:
        """Start neutron-server (after `start`), with a PostgreSQL cluster of its own; return
        its root URL."""
        root = self.root
        if root is None or self._neutron is not None:
            raise LocalOpenStackError(f"{self!r}: start_neutron needs a started one, once")
        installed = self._installed_dirs()
        try:
            self._neutron_db = database = LocalPostgres()
            url = database.start().replace("postgresql://", "postgresql+psycopg2://")
            self._configure_neutron(root, url)
            (root / "neutron_schema.py").write_text(_NEUTRON_SCHEMA)
            self._run(installed.neutron / "python", str(root / "neutron_schema.py"), url)
            config = ("--config-file", str(root / "neutron.conf"))
            self._run(installed.neutron / "neutron-db-manage", *config, "stamp", "heads")
            self._register_neutron()
            self._neutron = self._serve("neutron", self.neutron_port)
            self._wait_answers(self._neutron, "neutron", self.endpoints.neutron_url + "/", timeout)
        except BaseException:
            self._stop_neutron()
            raise
        return self.endpoints.neutron_url

    def stop_keystone(self) -> None:
        """Stop Keystone alone (cinder-api goes on, refusing tokens it cannot validate)."""
        if self._keystone is not None:
            stop_group(self._keystone, 10.0)
            self._keystone = None

    def start_keystone(self, timeout: float = 60.0) -> None:
        """Start Keystone again after `stop_keystone`."""
        self._start_keystone(timeout)

    def remove(self) -> None:
        self._stop_neutron()
        for proc in (self._cinder, self._keystone):
            if proc is not None:
                stop_group(proc, 10.0)
        self._cinder = self._keystone = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- configuration ----------------------------------------------------------------------

    def _stop_neutron(self) -> None:
        if self._neutron is not None:
            stop_group(self._neutron, 10.0)
            self._neutron = None
        if self._neutron_db is not None:
            self._neutron_db.remove()
            self._neutron_db = None

    # -- configuration ----------------------------------------------------------------------

    def _configure(self, root: Path) -> None:
        venv = self._installed_dirs().openstack.parent
        (root / "keystone.conf").write_text(
            textwrap.dedent(f"""\
                [DEFAULT]
                log_file = {root}/keystone-app.log
                [database]
                connection = sqlite:///{root}/keystone.db
                [token]
                provider = fernet
                [fernet_tokens]
                key_repository = {root}/fernet-keys
                [fernet_receipts]
                key_repository = {root}/fernet-keys
                [credential]
                key_repository = {root}/credential-keys
                """)
        )
        (root / "cinder.conf").write_text(
            textwrap.dedent(f"""\
                [DEFAULT]
                auth_strategy = keystone
                transport_url = fake://
                state_path = {root}/cinder-state
                log_file = {root}/cinder-app.log
                api_paste_config = {venv}/etc/cinder/api-paste.ini
                [database]
                connection = sqlite:///{root}/cinder.db
                [oslo_concurrency]
                lock_path = {root}/cinder-locks
                [oslo_messaging_notifications]
                driver = noop
                """)
            + self._authtoken("cinder")
        )
        for name, module in (("keystone", "keystone.wsgi.api"), ("cinder", "cinder.wsgi.api")):
            self._write_wsgi(root, name, module, [root / f"{name}.conf"])
        (root / "cinder-state").mkdir()

    def _configure_neutron(self, root: Path, database_url: str) -> None:
        venv = self._installed_dirs().neutron.parent
        (root / "neutron.conf").write_text(
            textwrap.dedent(f"""\
                [DEFAULT]
                core_plugin = ml2
                service_plugins = router
                auth_strategy = keystone
                transport_url = fake://
                state_path = {root}/neutron-state
                log_file = {root}/neutron-app.log
                api_paste_config = {venv}/etc/neutron/api-paste.ini
                notify_nova_on_port_status_changes = false
                notify_nova_on_port_data_changes = false
                [database]
                connection = {database_url}
                [oslo_concurrency]
                lock_path = {root}/neutron-locks
                [oslo_messaging_notifications]
                driver = noop
                [ml2]
                type_drivers = flat,vxlan
                tenant_network_types = vxlan
                mechanism_drivers =
                [ml2_type_flat]
                flat_networks = *
                [ml2_type_vxlan]
                vni_ranges = 1:1000
                """)
            + self._authtoken("neutron")
        )
        self._write_wsgi(root, "neutron", "neutron.wsgi.api", [root / "neutron.conf"])
        (root / "neutron-state").mkdir()

    def _authtoken(self, user: str) -> str:
        """The `[keystone_authtoken]` section of a service checking tokens against Keystone as
        `user` (a service user `_register` makes)."""
        auth_url = self.endpoints.auth_url
        return textwrap.dedent(f"""\
            [keystone_authtoken]
            www_authenticate_uri = {auth_url}
            auth_url = {auth_url}
            auth_type = password
            username = {user}
            password = {PASSWORD}
            project_name = service
            user_domain_name = Default
            project_domain_name = Default
            token_cache_time = {TOKEN_CACHE_SECONDS}
            """)

    @staticmethod
    def _write_wsgi(root: Path, name: str, module: str, configs: list[Path]) -> None:
        argv = [name] + [arg for config in configs for arg in ("--config-file", str(config))]
        (root / f"{name}_wsgi.py").write_text(_WSGI.format(argv=argv, module=module))

    def _register_cinder(self) -> None:
        """The block-storage and volumev3 services with their endpoints in both regions (see
        the module's docstring) and their service user."""
        url = f"{self.endpoints.cinder_url}/v3/$(project_id)s"
        not_cinder = f"{self.endpoints.auth_url}/$(project_id)s"
        urls = {
            REGION: {"public": url, "internal": url, "admin": url},
            OTHER_REGION: {"public": not_cinder, "internal": url, "admin": not_cinder},
        }
        with self._admin() as identity:
            identity.create_region(id=OTHER_REGION)
            self._register(identity, "cinder", {"block-storage": urls, "volumev3": urls})

    def _register_neutron(self) -> None:
        """The network service, at every interface of REGION, and its service user."""
        url = self.endpoints.neutron_url
        urls = {REGION: {interface: url for interface in ("public", "internal", "admin")}}
        with self._admin() as identity:
            self._register(identity, "neutron", {"network": urls})

    @contextlib.contextmanager
    def _admin(self) -> Iterator[Any]:
        """Keystone's identity API as its bootstrap admin."""
        import openstack

        conn = openstack.connect(
            auth_url=self.endpoints.auth_url,
            username="admin",
            password=PASSWORD,
            project_name="admin",
            user_domain_name="Default",
            project_domain_name="Default",
            region_name=REGION,
            identity_interface="public",
        )
        try:
            yield conn.identity
        finally:
            conn.close()

    @staticmethod
    def _register(
        identity: Any, user_name: str, services: dict[str, dict[str, dict[str, str]]]
    ) -> None:
        """A service user `user_name` (admin in the `service` project, as keystonemiddleware
        needs; the project made by the first call) and `services`: type -> region -> interface
        -> URL."""
        project = identity.find_project("service", domain_id="default") or identity.create_project(
            name="service", domain_id="default"
        )
        user = identity.create_user(name=user_name, password=PASSWORD, domain_id="default")
        identity.assign_project_role_to_user(project, user, identity.find_role("admin"))
        for kind, by_region in services.items():
            service = identity.create_service(name=f"{user_name}-{kind}", type=kind)
            for region, by_interface in by_region.items():
                for interface, url in by_interface.items():
                    identity.create_endpoint(
                        service_id=service.id, interface=interface, url=url, region_id=region
                    )

    # -- processes --------------------------------------------------------------------------

    def _installed_dirs(self) -> Installed:
        assert self._installed is not None
        return self._installed

    def _start_keystone(self, timeout: float) -> None:
        self._keystone = self._serve("keystone", self.keystone_port)
        self._wait_answers(self._keystone, "keystone", self.endpoints.auth_url, timeout)

    def _serve(self, name: str, port: int) -> subprocess.Popen[bytes]:
        root = self.root
        assert root is not None
        installed = self._installed_dirs()
        bin_dir = installed.neutron if name == "neutron" else installed.openstack
        argv = [
            str(bin_dir / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
            "--timeout",
            "120",
            "--chdir",
            str(root),
            "--pythonpath",
            str(root),
            f"{name}_wsgi:application",
        ]
        return spawn_group(argv, root / f"{name}.log")

    def _wait_answers(
        self, proc: subprocess.Popen[bytes], name: str, url: str, timeout: float
    ) -> None:
        """Wait until the service `name` (run by `proc`) answers at `url`."""
        assert self.root is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # it answers (300 Multiple Choices for a version list)
            except OSError:
                time.sleep(0.2)
        logs = [self.root / f"{name}.log", self.root / f"{name}-app.log"]
        state = f"exited with {proc.returncode}" if proc.poll() is not None else "not answering"
        raise LocalOpenStackError(f"{name} {state} at {url}; {log_tail('log', logs, 8)}")

    def _keystone_manage(self, *args: str) -> None:
        assert self.root is not None
        self._run(
            self._installed_dirs().openstack / "keystone-manage",
            "--config-file",
            str(self.root / "keystone.conf"),
            *args,
        )

    def _run(self, program: Path, *args: str) -> None:
        try:
            done = subprocess.run(
                [str(program), *args], capture_output=True, text=True, timeout=300, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalOpenStackError(f"{program.name} failed: {exc}") from exc
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise LocalOpenStackError(
                f"{program.name} {args[-1]} exited with {done.returncode}: {tail}"
            )
