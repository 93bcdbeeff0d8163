"""A real Apache Kafka (KRaft) on loopback for development and tests: one node or a cluster of N
combined broker+controller nodes, plaintext or secured (SASL_SSL with SCRAM, TLS, ACLs).

In the spirit of `confluent local`: the broker's jars are fetched once from Maven Central with `mvn`
into a cache, storage is formatted once under a state directory, and the nodes run in the
background on loopback until stopped. A cluster is named by its first client port P; node K
listens for clients on P+2(K-1) and for its controller quorum on the port after that. Its shape
(nodes, secure) is fixed when it is first started and kept in `cluster.json`. Nothing here is
needed to run against a real cluster.

Secured, the client (and inter-broker) listener is SASL_SSL with SCRAM-SHA-512, the controller
listener mutual TLS (SCRAM cannot authenticate controllers), authorization is KRaft's
StandardAuthorizer denying whatever no ACL allows, and the `admin` user (a super user) is
bootstrapped at format time. Every user's client settings are a TOML file under `users/`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from connector.config import KafkaSettings, load_settings
from connector.dev.local_service import signal_group
from connector.dev.tls import BROKER_CN, ensure_broker_tls, one_line_pem
from connector.errors import ConnectorError, LocalKafkaError
from connector.kafka.cluster import broker_ids, set_scram_password, under_replicated

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the log4j line Kafka 4.1 is built against; binds its SLF4J 1.7 API
#: The super user of a secure cluster; its SCRAM credentials are written at format time.
ADMIN_USER = "admin"
SCRAM_MECHANISM = "SCRAM-SHA-512"
#: Ports node K uses: client at P + PORTS_PER_NODE*(K-1), controller the port after it.
PORTS_PER_NODE = 2

#: JVM options for short runs and for nodes that share a machine: the quick compiler only and
#: the single-threaded collector halve the CPU a start takes.
_QUICK_JVM = ("-Xms64m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.cascade-connector</groupId>
  <artifactId>local-kafka</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
"""


@dataclass(frozen=True)
class Shape:
    """What a cluster was made as; fixed at its first start."""

    nodes: int
    secure: bool


@dataclass(frozen=True)
class NodeStatus:
    """One node: whether its process runs, and whether the cluster lists it as a live broker."""

    node: int
    running: bool
    pid: int | None
    address: str
    answering: bool


@dataclass(frozen=True)
class BrokerStatus:
    """What `status` reports: every node, and the under-replicated partitions (when it answers)."""

    nodes: list[NodeStatus]
    bootstrap: str
    home: Path
    secure: bool
    under_replicated: list[str] | None

    @property
    def running(self) -> bool:
        return any(n.running for n in self.nodes)

    @property
    def answering(self) -> bool:
        return all(n.answering for n in self.nodes)

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid


@dataclass(frozen=True)
class LocalKafka:
    """One local cluster, identified by its first client port.

    `nodes` and `secure` are what a new cluster is made as; an existing one keeps its shape, and
    asking for another is an error.
    """

    port: int = 9092
    cache_dir: Path = field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"))
    state_dir: Path = field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state"))
    kafka_version: str = KAFKA_VERSION
    nodes: int | None = None
    secure: bool = False
    #: The quick JVM of a cluster's nodes for a lone node too: for a throwaway broker that is
    #: restarted often and carries little (a start takes much less CPU; docs/performance.md).
    quick_jvm: bool = False

    @property
    def home(self) -> Path:
        """Shape, certificates, user settings, and (for one node) data, config, pid and log."""
        return self.state_dir / f"kafka-{self.port}"

    @property
    def libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def shape(self) -> Shape:
        """The stored shape, or the one asked for when the cluster was never started."""
        try:
            stored = json.loads((self.home / "cluster.json").read_text())
            return Shape(int(stored["nodes"]), bool(stored["secure"]))
        except (OSError, ValueError, KeyError):
            return Shape(self.nodes or 1, self.secure)

    @property
    def bootstrap(self) -> str:
        return ",".join(self.address(k) for k in self.node_ids)

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.shape.nodes + 1))

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.client_port(node)}"

    def client_port(self, node: int) -> int:
        return self.port + PORTS_PER_NODE * (node - 1)

    def controller_port(self, node: int) -> int:
        return self.client_port(node) + 1

    def node_dir(self, node: int) -> Path:
        # One node keeps the layout of a single broker from before clusters existed.
        return self.home if self.shape.nodes == 1 else self.home / f"node-{node}"

    def log_file(self, node: int = 1) -> Path:
        return self.node_dir(node) / "kafka.log"

    def settings_file(self, user: str) -> Path:
        """The TOML settings (usable with `--config`) of a user of a secure cluster."""
        return self.home / "users" / f"{user}.toml"

    def admin_settings(self) -> KafkaSettings:
        """Kafka settings with the super user's credentials (plaintext: just the bootstrap)."""
        if not self.shape.secure:
            return KafkaSettings(bootstrap=self.bootstrap)
        path = self.settings_file(ADMIN_USER)
        try:
            return load_settings(path).kafka
        except ConnectorError as exc:
            raise LocalKafkaError(f"cannot read the admin's settings: {exc}") from exc

    @property
    def class_archive(self) -> Path:
        """The class-data archive of the broker's classes, next to the jars it was made from."""
        return self.libs.parent / "classes.jsa"

    def _class_data(self, dump: Path | None = None) -> list[str]:
        """JVM options that map the class-data archive, which makes a start take much less CPU
        (docs/performance.md); without one, a node given `dump` writes its
        classes there when it exits (`stop` keeps that as the archive). A stale or unreadable
        archive is only a warning: the JVM then loads its classes from the jars."""
        if self.class_archive.exists():
            return [f"-XX:SharedArchiveFile={self.class_archive}"]
        # The dump lists each class it leaves out as a warning: a hundred lines of no use.
        return [] if dump is None else [f"-XX:ArchiveClassesAtExit={dump}", "-Xlog:cds=off"]

    def _dump_file(self, node: int) -> Path:
        return self.node_dir(node) / "classes.jsa.part"

    def fetch(self, echo: bool = True) -> Path:
        """Download the broker's jars with `mvn` unless the cache has them; return the libs dir."""
        if (self.libs / ".complete").exists():
            return self.libs
        mvn = _require("mvn", "Maven fetches the broker's jars from Maven Central")
        _require("java", "the broker is a Java program")
        work = self.libs.parent
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_POM.format(kafka=self.kafka_version, log4j=LOG4J_VERSION))
        staging = work / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        if echo:
            print(f"fetching Apache Kafka {self.kafka_version} jars from Maven Central (once)...")
        proc = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(work / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LocalKafkaError(
                f"mvn could not fetch kafka_2.13:{self.kafka_version} (exit {proc.returncode}):\n"
                + _tail(proc.stdout + proc.stderr)
            )
        (staging / ".complete").write_text(self.kafka_version)
        shutil.rmtree(self.libs, ignore_errors=True)
        self.class_archive.unlink(missing_ok=True)  # made from the jars replaced here
        staging.rename(self.libs)
        return self.libs

    def status(self) -> BrokerStatus:
        pids = {k: self._live_pid(k) for k in self.node_ids}
        live: set[int] = set()
        lagging: list[str] | None = None
        if any(pid is not None for pid in pids.values()):
            with contextlib.suppress(ConnectorError):
                admin = self.admin_settings()
                live = broker_ids(admin, timeout=3.0, quiet=True)
                lagging = under_replicated(admin, timeout=5.0)
        nodes = [
            NodeStatus(k, pid is not None, pid, self.address(k), pid is not None and k in live)
            for k, pid in pids.items()
        ]
        return BrokerStatus(nodes, self.bootstrap, self.home, self.shape.secure, lagging)

    def start(self, timeout: float = 90.0, echo: bool = True, node: int | None = None) -> str:
        """Start every node that is not running (or only `node`), and wait until the cluster
        lists them all as brokers; return the bootstrap list."""
        shape = self._settle_shape()
        if node is not None and node not in self.node_ids:
            raise LocalKafkaError(f"no node {node}: this cluster has nodes 1 to {shape.nodes}")
        java = _require("java", "the broker is a Java program")
        wanted = [node] if node is not None else self.node_ids
        starting = [k for k in wanted if self._live_pid(k) is None]
        for k in starting:
            for port in (self.client_port(k), self.controller_port(k)):
                if _port_in_use(port):
                    raise LocalKafkaError(
                        f"port {port} on 127.0.0.1 is already in use by another process; "
                        f"choose another with --port (node K takes ports "
                        f"port+{PORTS_PER_NODE}(K-1) and the one after)"
                    )
        libs = self.fetch(echo=echo) if starting else self.libs
        self._prepare(shape, java, libs)
        procs = {k: self._spawn(k, java, libs) for k in starting}
        self._wait_until_answering(wanted, procs, timeout)
        return self.bootstrap

    def stop(self, timeout: float = 30.0, node: int | None = None) -> bool:
        """Stop every node (or only `node`) and wait for its process to end; False if none was
        running."""
        if node is not None and node not in self.node_ids:
            raise LocalKafkaError(f"no node {node}: this cluster has nodes 1 to {self.shape.nodes}")
        # All at once: stopped one by one, the last nodes would wait for a quorum that is gone.
        pids = {k: self._live_pid(k) for k in ([node] if node is not None else self.node_ids)}
        running = {k: pid for k, pid in pids.items() if pid is not None}
        for pid in running.values():
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for k, pid in running.items():
            dump = self._dump_file(k)
            if _wait_exit(pid, max(0.0, deadline - time.monotonic())):
                # It ended on its own, so its class dump (if it made one) is whole.
                if dump.exists() and not self.class_archive.exists():
                    dump.replace(self.class_archive)
            else:
                signal_group(pid, signal.SIGKILL)
                if not _wait_exit(pid, 10.0):
                    raise LocalKafkaError(f"node {k} (pid {pid}) did not exit after SIGKILL")
            dump.unlink(missing_ok=True)
            self._pid_file(k).unlink(missing_ok=True)
        return bool(running)

    def add_user(self, name: str, rotate: bool = False) -> Path:
        """Create SCRAM user `name` with a new random password (or, with `rotate`, give an
        existing one a new password); return the path of its settings file."""
        if not self.shape.secure:
            raise LocalKafkaError(f"the cluster at port {self.port} is not secure (--secure)")
        if not name or not all(c.isalnum() or c in "._-" for c in name):
            raise LocalKafkaError(f"user name {name!r}: use letters, digits, '.', '_' and '-'")
        path = self.settings_file(name)
        if path.exists() and not rotate:
            raise LocalKafkaError(f"user {name} exists (settings in {path}); --rotate renews it")
        password = secrets.token_urlsafe(24)
        admin = self.admin_settings()
        set_scram_password(admin, name, password, SCRAM_MECHANISM)
        self._write_user_settings(name, password)
        return path

    def _settle_shape(self) -> Shape:
        """The cluster's shape, stored at the first start; a request for another is an error."""
        stored = self.home / "cluster.json"
        if not stored.exists():
            shape = Shape(self.nodes or 1, self.secure)
            if shape.nodes < 1:
                raise LocalKafkaError("--brokers: at least 1")
            self.home.mkdir(parents=True, exist_ok=True)
            stored.write_text(json.dumps({"nodes": shape.nodes, "secure": shape.secure}) + "\n")
            return shape
        shape = self.shape
        if (self.nodes is not None and self.nodes != shape.nodes) or (
            self.secure and not shape.secure
        ):
            made = f"{shape.nodes} node(s), {'secure' if shape.secure else 'plaintext'}"
            raise LocalKafkaError(
                f"the cluster at port {self.port} was made with {made}; stop it and remove "
                f"{self.home}, or use another --port"
            )
        return shape

    def _prepare(self, shape: Shape, java: str, libs: Path) -> None:
        """Write every node's config, and format the storage of nodes that have none."""
        admin_password = None
        if shape.secure:
            tls = ensure_broker_tls(self.home / "tls")
            admin_password = self._admin_password()
        cluster_id = _cluster_id(self.home)
        formats: dict[int, subprocess.Popen[str]] = {}
        for k in self.node_ids:
            directory = self.node_dir(k)
            (directory / "data").mkdir(parents=True, exist_ok=True)
            props = _server_properties(self, k, directory / "data")
            if shape.secure:
                assert admin_password is not None
                props += _secure_properties(tls.broker_cert, tls.broker_key, tls.ca_cert)
                props += _jaas(admin_password)
            _write_private(directory / "server.properties", props)
            (directory / "log4j2.properties").write_text(_LOG4J2)
            if (directory / "data" / "meta.properties").exists():
                continue
            tool = ["kafka.tools.StorageTool", "format", "-t", cluster_id]
            tool += ["-c", str(directory / "server.properties")]
            if shape.nodes == 1:
                tool.append("--standalone")
            if admin_password is not None:
                scram = f"{SCRAM_MECHANISM}=[name={ADMIN_USER},password={admin_password}]"
                tool += ["--add-scram", scram]
            # The tool and its arguments go in a private argument file that java expands, so the
            # admin's password is never on a command line (`ps` shows every user argv).
            argfile = directory / "format.args"
            _write_private(argfile, "".join(f"{_java_quote(arg)}\n" for arg in tool))
            command = [java, *_QUICK_JVM, *self._class_data(), "-cp", f"{libs}/*", f"@{argfile}"]
            # Each format is a JVM start of a few seconds: run them side by side.
            formats[k] = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        for k, proc in formats.items():
            output, _ = proc.communicate()
            (self.node_dir(k) / "format.args").unlink(missing_ok=True)
            if proc.returncode != 0:
                raise LocalKafkaError(
                    f"formatting the storage of node {k} failed:\n"
                    + _tail(output).replace(admin_password or "\0", "***")
                )

    def _admin_password(self) -> str:
        """The admin's password: from its settings file, or made (and the file written)."""
        path = self.settings_file(ADMIN_USER)
        if path.exists():
            secret = self.admin_settings().sasl_password
            if secret is None:
                raise LocalKafkaError(f"{path} has no kafka.sasl_password")
            return secret.get_secret_value()
        password = secrets.token_urlsafe(24)
        self._write_user_settings(ADMIN_USER, password)
        return password

    def _write_user_settings(self, user: str, password: str) -> None:
        path = self.settings_file(user)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(
            path,
            f"# Settings of SCRAM user {user} of the local secure Kafka at port {self.port}\n"
            "[kafka]\n"
            f'bootstrap = "{self.bootstrap}"\n'
            'security_protocol = "SASL_SSL"\n'
            f'sasl_mechanism = "{SCRAM_MECHANISM}"\n'
            f'sasl_username = "{user}"\n'
            f'sasl_password = "{password}"\n'
            f'ssl_ca_location = "{self.home / "tls" / "ca.pem"}"\n',
        )

    def _spawn(self, node: int, java: str, libs: Path) -> subprocess.Popen[bytes]:
        directory = self.node_dir(node)
        # Several nodes share this machine (or this one is a throwaway, `quick_jvm`): a smaller
        # heap each than a lone broker gets, and a JVM that starts on half the CPU.
        alone = self.shape.nodes == 1 and not self.quick_jvm
        jvm = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC"] if alone else ["-Xmx512m", *_QUICK_JVM]
        with self.log_file(node).open("ab") as log:
            proc = subprocess.Popen(
                [
                    java,
                    *jvm,
                    *self._class_data(dump=self._dump_file(node)),
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={directory / 'log4j2.properties'}",
                    "-cp",
                    f"{libs}/*",
                    "kafka.Kafka",
                    str(directory / "server.properties"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file(node).write_text(str(proc.pid))
        return proc

    def pid(self, node: int = 1) -> int | None:
        """The process of `node` if it runs; unlike `status`, asks the broker nothing (a frozen
        broker would keep that waiting for seconds)."""
        return self._live_pid(node)

    def _pid_file(self, node: int) -> Path:
        return self.node_dir(node) / "kafka.pid"

    def _live_pid(self, node: int) -> int | None:
        try:
            pid = int(self._pid_file(node).read_text().strip())
        except (OSError, ValueError):
            return None
        if _is_our_broker(pid):
            return pid
        self._pid_file(node).unlink(missing_ok=True)
        return None

    def _wait_until_answering(
        self, nodes: list[int], procs: dict[int, subprocess.Popen[bytes]], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        admin = self.admin_settings()
        while time.monotonic() < deadline:
            for k, proc in procs.items():
                if proc.poll() is not None:
                    raise LocalKafkaError(
                        f"node {k} exited during start-up; last lines of {self.log_file(k)}:\n"
                        + self._log_tail(k)
                    )
            for k in nodes:
                if k not in procs and self._live_pid(k) is None:
                    raise LocalKafkaError(f"node {k} is not running")
            try:
                if set(nodes) <= broker_ids(admin, timeout=1.0, quiet=True):
                    return
            except ConnectorError:
                pass
            time.sleep(0.2)
        for k in procs:
            self.stop(node=k)
        raise LocalKafkaError(
            f"node(s) {', '.join(map(str, nodes))} did not answer on {self.bootstrap} within "
            f"{timeout:.0f}s; last lines of {self.log_file(nodes[0])}:\n" + self._log_tail(nodes[0])
        )

    def _log_tail(self, node: int) -> str:
        try:
            return _tail(self.log_file(node).read_text(errors="replace"))
        except OSError:
            return "(no broker log)"


def _server_properties(cluster: LocalKafka, node: int, data_dir: Path) -> str:
    nodes = cluster.shape.nodes
    client = "SASL_SSL" if cluster.shape.secure else "PLAINTEXT"
    controller = "SSL" if cluster.shape.secure else "PLAINTEXT"
    # Internal topics as replicated as the cluster allows, up to 3, writable with one node down.
    replicas = min(3, nodes)
    in_sync = min(2, replicas)
    if nodes == 1:
        # A lone node keeps the dynamic-quorum layout it has always been formatted with.
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{cluster.controller_port(1)}"
    else:
        voters = ",".join(f"{k}@127.0.0.1:{cluster.controller_port(k)}" for k in cluster.node_ids)
        quorum = f"controller.quorum.voters={voters}"
    return f"""process.roles=broker,controller
node.id={node}
listeners={client}://127.0.0.1:{cluster.client_port(node)},CONTROLLER://127.0.0.1:{cluster.controller_port(node)}
advertised.listeners={client}://127.0.0.1:{cluster.client_port(node)}
controller.listener.names=CONTROLLER
listener.security.protocol.map={client}:{client},CONTROLLER:{controller}
inter.broker.listener.name={client}
{quorum}
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=false
default.replication.factor={replicas}
offsets.topic.replication.factor={replicas}
# 4 partitions for the internal topics, not 50: they are made at their first use, and 50 (times
# 3 replicas on a cluster) took seconds to become available (the first transaction waited).
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={in_sync}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={in_sync}
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
"""


def _secure_properties(cert: Path, key: Path, ca: Path) -> str:
    # Inline PEM: an unencrypted key needs no password in the file, and Kafka logs these values
    # as [hidden] (they are password-typed settings).
    return f"""sasl.enabled.mechanisms={SCRAM_MECHANISM}
sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}
ssl.keystore.type=PEM
ssl.keystore.certificate.chain={one_line_pem(cert)}
ssl.keystore.key={one_line_pem(key)}
ssl.truststore.type=PEM
ssl.truststore.certificates={one_line_pem(ca)}
listener.name.controller.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{ADMIN_USER};User:CN={BROKER_CN}
"""


def _jaas(password: str) -> str:
    login = "org.apache.kafka.common.security.scram.ScramLoginModule"
    return (
        f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config={login} required "
        f'username="{ADMIN_USER}" password="{password}";\n'
    )


def _cluster_id(home: Path) -> str:
    """One id for every node of the cluster, made once."""
    path = home / "cluster.id"
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    while True:
        made = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not made.startswith("-"):  # Kafka's own ids never start with '-' (CLI parsing)
            break
    path.write_text(made)
    return made


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "cascade-connector"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _java_quote(arg: str) -> str:
    """`arg` as one argument of a java @argument file: quoted, with \\ and " escaped."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LocalKafkaError(f"`{tool}` was not found on PATH ({why}); install it first")
    return path


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _is_our_broker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _is_our_broker(pid):
            return True
        time.sleep(0.1)
    return False
