"""A throwaway RabbitMQ node for tests and benchmarks: Debian's `rabbitmq-server`, on loopback.

The node gets free ports for AMQP, the Erlang distribution and its own epmd (started here and
stopped with the node, so nothing collides with a system RabbitMQ or another node), a data
directory of its own, and a random password for its one user. `stop` ends the node but keeps its
data, so `start` brings the same node back (a bus outage, for tests); `remove` stops it and
deletes everything. As root, the node runs as the `rabbitmq` user the Debian package creates,
and its directories belong to that user. `make rabbitmq` installs the package.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from connector.dev import free_port
from connector.dev.local_service import (
    LocalService,
    SystemUser,
    log_tail,
    spawn_group,
    stop_group,
)
from connector.errors import ConnectorError

#: The system user that runs the node when we run as root.
SYSTEM_USER = "rabbitmq"
#: Debian's start script (the one under /usr/sbin wraps it in `su`, which would drop our env).
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD_CANDIDATES = ("/usr/bin/epmd", "/usr/lib/erlang/bin/epmd")
#: The AMQP 0-9-1 protocol header; a broker that is up answers it with Connection.Start.
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


class LocalRabbitError(ConnectorError):
    """The throwaway node could not be created, started or stopped."""

    exit_code = 3


class LocalRabbit(LocalService):
    """One throwaway node. `start()` returns its transport URL (`rabbit://USER:PASS@HOST:PORT/`)."""

    def __init__(self, port: int | None = None) -> None:
        if not SERVER.exists():
            raise LocalRabbitError(
                f"{SERVER} not found: install Debian's rabbitmq-server (`make rabbitmq`)"
            )
        self.port = port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.user = "cascade"
        self.password = secrets.token_hex(12)
        self.root: Path | None = None
        self._node: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._user = SystemUser(SYSTEM_USER)

    @property
    def url(self) -> str:
        return f"rabbit://{self.user}:{self.password}@127.0.0.1:{self.port}/"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalRabbit(port={self.port}, {state}, root={self.root})"

    @property
    def running(self) -> bool:
        return self._node is not None and self._node.poll() is None

    def start(self, timeout: float = 90.0) -> str:
        """Start the node (creating its files the first time) and wait until it answers AMQP."""
        if self.running:
            raise LocalRabbitError(f"{self!r} is already started")
        if self.root is None:
            self.root = self._create()
        root = self.root
        epmd = next((p for p in EPMD_CANDIDATES if Path(p).exists()), shutil.which("epmd"))
        if epmd is None:
            raise LocalRabbitError("epmd not found: Debian's erlang-base should provide it")
        env = self._env(root)
        self._epmd = spawn_group(
            self._as_user([epmd, "-port", str(self.epmd_port)], env), root / "node.out"
        )
        self._node = spawn_group(self._as_user([str(SERVER)], env), root / "node.out")
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._node.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with {self._node.returncode}"
                    if self._node.poll() is not None
                    else f"did not answer AMQP on port {self.port} within {timeout:.0f} s"
                )
                logs = [root / "node.out", *sorted((root / "log").glob("*.log"))]
                tail = log_tail("last log lines", logs, 12)
                self.stop()
                raise LocalRabbitError(f"RabbitMQ {why}; {tail}")
            time.sleep(0.2)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node (SIGTERM: RabbitMQ shuts down cleanly) and its epmd; keep the data."""
        for attr in ("_node", "_epmd"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            setattr(self, attr, None)
            if proc is not None:
                stop_group(proc, timeout)

    def remove(self) -> None:
        """Stop the node and delete its files."""
        self.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _create(self) -> Path:
        root = Path(tempfile.mkdtemp(prefix="cascade-rabbit-"))
        for sub in ("mnesia", "log"):
            (root / sub).mkdir()
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        (root / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.port}",
                    f"default_user = {self.user}",
                    f"default_pass = {self.password}",
                    "loopback_users = none",
                    "disk_free_limit.absolute = 50MB",
                    "log.console = false",
                    "log.file.level = warning",
                    "",
                ]
            )
        )
        self._user.own(root)
        return root

    def _env(self, root: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": f"cascade{self.port}@localhost",
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "rabbit.pid"),
            # The Erlang distribution listens on loopback only, on its own port.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _as_user(self, argv: list[str], env: dict[str, str]) -> list[str]:
        pairs = [f"{k}={v}" for k, v in env.items()]
        return self._user.argv(["env", "-i", *pairs, *argv])

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
                sock.sendall(_AMQP_HEADER)
                # A method frame (type 1) on channel 0: Connection.Start.
                return sock.recv(1) == b"\x01"
        except OSError:
            return False
