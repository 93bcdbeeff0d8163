"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary directory, a free
loopback port, trust authentication, torn down (data and all) by `stop`.

It runs Debian's server binaries (`/usr/lib/postgresql/<version>/bin`, installed by
`make postgres`). initdb and postgres refuse to run as root, so when this process is
root the cluster runs as the `postgres` system user the Debian package creates.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from connector.dev import free_port
from connector.dev.local_service import LocalService, SystemUser, log_tail
from connector.errors import ConnectorError

#: The system user that owns the cluster when we run as root.
SYSTEM_USER = "postgres"


class LocalPostgresError(ConnectorError):
    """The throwaway cluster could not be created, started or stopped."""

    exit_code = 3


def find_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: the newest Debian install, else PATH."""
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise LocalPostgresError("PostgreSQL server binaries (initdb) not found; run `make postgres`")


class LocalPostgres(LocalService):
    """One throwaway cluster. `start()` returns its URL; `stop()` (or `remove()`, the same: a
    cluster is never kept) ends it and deletes its files."""

    def __init__(
        self, bin_dir: Path | None = None, port: int | None = None, durable: bool = False
    ) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port = port or free_port()
        #: False (tests): fsync and synchronous commit off, for speed; True (benchmarks): defaults.
        self.durable = durable
        self.root: Path | None = None
        self._user = SystemUser(SYSTEM_USER)

    @property
    def url(self) -> str:
        """SQLAlchemy-style URL of the cluster's `postgres` database, as superuser `postgres`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __repr__(self) -> str:
        state = f"running in {self.root}" if self.root else "stopped"
        return f"LocalPostgres(port={self.port}, {state})"

    def start(self, timeout: float = 60.0) -> str:
        """Create the cluster, start it, wait until it accepts connections; return its URL."""
        if self.root is not None:
            raise LocalPostgresError(f"{self!r} is already started")
        root = Path(tempfile.mkdtemp(prefix="cascade-pg-"))
        self.root = root
        try:
            self._user.own(root)
            self._run(
                "initdb",
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                timeout=timeout,
            )
            # Loopback TCP only, socket in our own directory (not /var/run/postgresql, which may
            # not exist or belong to a system cluster).
            options = f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1"
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            # -w: returns once the server accepts connections.
            self._run(
                "pg_ctl",
                "-D",
                str(root / "data"),
                "-l",
                str(root / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
                timeout=timeout + 10,
            )
        except BaseException:
            self._remove()
            raise
        return self.url

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: open sessions are ended) and delete its files."""
        if self.root is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            self._remove()

    def remove(self) -> None:
        self.stop()

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> None:
        argv = self._user.argv([str(self.bin_dir / program), *args])
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalPostgresError(f"{program} failed: {exc}") from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            logs = [self.root / "postgres.log"] if self.root else []
            tail = log_tail("server log", logs, 5)
            raise LocalPostgresError(
                f"{program} exited with {done.returncode}: {output} {tail}".strip()
            )

    def _remove(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root)
            self.root = None
