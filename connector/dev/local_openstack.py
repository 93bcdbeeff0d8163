"""A throwaway real OpenStack for tests: Keystone and cinder-api, from their own Python packages.

`scripts/ensure-openstack.sh` installs the pinned releases (and gunicorn) once into a venv of
their own outside the repository; this module starts them on free loopback ports with SQLite
databases in a temporary directory, each served by gunicorn as a process group of its own and
stopped by its pid. Keystone issues fernet tokens and is bootstrapped by `keystone-manage
bootstrap`; its catalog has `identity`, `block-storage` and `volumev3` in REGION (public,
internal and admin interfaces, as DevStack makes them), and `block-storage` and `volumev3` in a
second region, OTHER_REGION, where only the internal endpoints reach cinder-api (the public and
admin ones are Keystone's URL, which answers 404 to a volume listing): a test tells from the
outcome which region and interface a client chose. cinder-api checks tokens with
keystonemiddleware against that Keystone; there is no bus (oslo.messaging's in-memory `fake://`
transport) and no scheduler or volume service, so created volumes stay `creating` until an
admin action (`os-reset_status`) changes them.

Keystone and cinder-api parse `sys.argv` with oslo.config when they are imported and would reject
gunicorn's own flags: a small WSGI module written beside their configuration sets a clean
`sys.argv` (with the config file) before importing each service's WSGI application.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.dev import free_port
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

sys.argv = [{name!r}, "--config-file", {config!r}]
from {module} import application  # noqa: E402
"""


class LocalOpenStackError(ConnectorError):
    """Keystone or cinder-api could not be installed, configured, started or stopped."""

    exit_code = 3


def ensure_installed() -> tuple[Path, bool]:
    """The bin directory of the services' venv, and whether it was installed just now by
    `scripts/ensure-openstack.sh` because it was missing (once; about half a minute with a warm
    pip cache: `make openstack`, which `make test` runs first, does it outside any test)."""
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
    return Path(done.stdout.strip().splitlines()[-1]), "installing" in done.stderr


@dataclass(frozen=True)
class Endpoints:
    """Where the running services answer."""

    #: Keystone's v3 API (`http://127.0.0.1:<port>/v3`)
    auth_url: str
    #: cinder-api's root (`http://127.0.0.1:<port>`)
    cinder_url: str


class LocalOpenStack(LocalService):
    """Keystone and cinder-api. `start()` returns Keystone's auth URL; `remove()` ends both
    processes (by pid) and deletes their files. `stop_keystone()` and `start_keystone()` restart
    Keystone alone (same port, same database and keys: tokens issued before stay valid)."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self._bin_dir = bin_dir
        self.root: Path | None = None
        self.keystone_port = free_port()
        self.cinder_port = free_port()
        self._keystone: subprocess.Popen[bytes] | None = None
        self._cinder: subprocess.Popen[bytes] | None = None

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(
            f"http://127.0.0.1:{self.keystone_port}/v3", f"http://127.0.0.1:{self.cinder_port}"
        )

    def __repr__(self) -> str:
        state = f"running in {self.root}" if self.root else "stopped"
        return f"LocalOpenStack(keystone={self.keystone_port}, cinder={self.cinder_port}, {state})"

    def start(self, timeout: float = 120.0) -> str:
        if self.root is not None:
            raise LocalOpenStackError(f"{self!r} is already started")
        bin_dir = self._bin_dir or ensure_installed()[0]
        self._bin_dir = bin_dir
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
            self._wait_answers("cinder-api", self.endpoints.cinder_url + "/", timeout)
        except BaseException:
            self.remove()
            raise
        return self.endpoints.auth_url

    def stop_keystone(self) -> None:
        """Stop Keystone alone (cinder-api goes on, refusing tokens it cannot validate)."""
        if self._keystone is not None:
            stop_group(self._keystone, 10.0)
            self._keystone = None

    def start_keystone(self, timeout: float = 60.0) -> None:
        """Start Keystone again after `stop_keystone`."""
        self._start_keystone(timeout)

    def remove(self) -> None:
        for proc in (self._cinder, self._keystone):
            if proc is not None:
                stop_group(proc, 10.0)
        self._cinder = self._keystone = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- configuration ----------------------------------------------------------------------

    def _configure(self, root: Path) -> None:
        auth_url = self.endpoints.auth_url
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
                api_paste_config = {self._bin_dir_path().parent}/etc/cinder/api-paste.ini
                [database]
                connection = sqlite:///{root}/cinder.db
                [oslo_concurrency]
                lock_path = {root}/cinder-locks
                [oslo_messaging_notifications]
                driver = noop
                [keystone_authtoken]
                www_authenticate_uri = {auth_url}
                auth_url = {auth_url}
                auth_type = password
                username = cinder
                password = {PASSWORD}
                project_name = service
                user_domain_name = Default
                project_domain_name = Default
                token_cache_time = {TOKEN_CACHE_SECONDS}
                """)
        )
        for name, module in (("keystone", "keystone.wsgi.api"), ("cinder", "cinder.wsgi.api")):
            config = str(root / f"{name}.conf")
            (root / f"{name}_wsgi.py").write_text(
                _WSGI.format(name=name, config=config, module=module)
            )
        (root / "cinder-state").mkdir()

    def _register_cinder(self) -> None:
        """The cinder service user (admin in `service`, as keystonemiddleware needs) and the
        block-storage/volumev3 services with their endpoints in both regions, through Keystone's
        API."""
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
            identity: Any = conn.identity
            service_project = identity.create_project(name="service", domain_id="default")
            user = identity.create_user(name="cinder", password=PASSWORD, domain_id="default")
            admin = identity.find_role("admin")
            identity.assign_project_role_to_user(service_project, user, admin)
            identity.create_region(id=OTHER_REGION)
            url = f"{self.endpoints.cinder_url}/v3/$(project_id)s"
            not_cinder = f"{self.endpoints.auth_url}/$(project_id)s"
            urls = {
                REGION: {"public": url, "internal": url, "admin": url},
                OTHER_REGION: {"public": not_cinder, "internal": url, "admin": not_cinder},
            }
            for kind in ("block-storage", "volumev3"):
                service = identity.create_service(name=f"cinder-{kind}", type=kind)
                for region, by_interface in urls.items():
                    for interface, endpoint in by_interface.items():
                        identity.create_endpoint(
                            service_id=service.id,
                            interface=interface,
                            url=endpoint,
                            region_id=region,
                        )
        finally:
            conn.close()

    # -- processes --------------------------------------------------------------------------

    def _bin_dir_path(self) -> Path:
        assert self._bin_dir is not None
        return self._bin_dir

    def _start_keystone(self, timeout: float) -> None:
        self._keystone = self._serve("keystone", self.keystone_port)
        self._wait_answers("Keystone", self.endpoints.auth_url, timeout)

    def _serve(self, name: str, port: int) -> subprocess.Popen[bytes]:
        root = self.root
        assert root is not None
        argv = [
            str(self._bin_dir_path() / "gunicorn"),
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

    def _wait_answers(self, what: str, url: str, timeout: float) -> None:
        proc = self._cinder if what == "cinder-api" else self._keystone
        assert proc is not None and self.root is not None
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
        name = "cinder" if what == "cinder-api" else "keystone"
        logs = [self.root / f"{name}.log", self.root / f"{name}-app.log"]
        state = f"exited with {proc.returncode}" if proc.poll() is not None else "not answering"
        raise LocalOpenStackError(f"{what} {state} at {url}; {log_tail('log', logs, 8)}")

    def _keystone_manage(self, *args: str) -> None:
        assert self.root is not None
        self._run(
            self._bin_dir_path() / "keystone-manage",
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
