"""A real single-node Apache Kafka (KRaft, combined broker+controller) for development and tests.

In the spirit of `confluent local`: the broker's jars are fetched once from Maven Central with `mvn`
into a cache, storage is formatted once under a state directory, and the broker runs in the
background on loopback until stopped. Nothing here is needed to run against a real cluster.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connector.errors import LocalKafkaError
from connector.kafka.admin import broker_answers

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the log4j line Kafka 4.1 is built against; binds its SLF4J 1.7 API

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


def _server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    return f"""process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
"""


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "cascade-connector"


@dataclass(frozen=True)
class BrokerStatus:
    """What `status` reports: whether our broker process runs, and whether it answers."""

    running: bool
    pid: int | None
    bootstrap: str
    answering: bool
    home: Path


@dataclass(frozen=True)
class LocalKafka:
    """One local broker, identified by its client port."""

    port: int = 9092
    cache_dir: Path = field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"))
    state_dir: Path = field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state"))
    kafka_version: str = KAFKA_VERSION

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def home(self) -> Path:
        """Data, config, pid file and log of this broker."""
        return self.state_dir / f"kafka-{self.port}"

    @property
    def libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def log_file(self) -> Path:
        return self.home / "kafka.log"

    @property
    def _pid_file(self) -> Path:
        return self.home / "kafka.pid"

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
        staging.rename(self.libs)
        return self.libs

    def status(self) -> BrokerStatus:
        pid = self._live_pid()
        answering = pid is not None and broker_answers(self.bootstrap, timeout=2.0)
        return BrokerStatus(pid is not None, pid, self.bootstrap, answering, self.home)

    def start(self, timeout: float = 60.0, echo: bool = True) -> str:
        """Start the broker (or find it running); return its bootstrap address once it answers."""
        pid = self._live_pid()
        if pid is not None:
            self._wait_until_answering(lambda: _is_our_broker(pid), timeout)
            return self.bootstrap
        java = _require("java", "the broker is a Java program")
        for port in (self.port, self.controller_port):
            if _port_in_use(port):
                raise LocalKafkaError(
                    f"port {port} on 127.0.0.1 is already in use by another process; "
                    f"choose another with --port (the controller takes port+1)"
                )
        libs = self.fetch(echo=echo)
        self.home.mkdir(parents=True, exist_ok=True)
        data = self.home / "data"
        props = self.home / "server.properties"
        props.write_text(_server_properties(self.port, self.controller_port, data))
        (self.home / "log4j2.properties").write_text(_LOG4J2)
        classpath = f"{libs}/*"
        if not (data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            proc = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise LocalKafkaError(
                    "formatting the broker storage failed:\n" + _tail(proc.stdout + proc.stderr)
                )
        with self.log_file.open("ab") as log:
            proc_ = subprocess.Popen(
                [
                    java,
                    "-Xms256m",
                    "-Xmx1g",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(props),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file.write_text(str(proc_.pid))
        self._wait_until_answering(lambda: proc_.poll() is None, timeout)
        return self.bootstrap

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker and wait for its process to end; False if it was not running."""
        pid = self._live_pid()
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        if not _wait_exit(pid, timeout):
            _signal_group(pid, signal.SIGKILL)
            if not _wait_exit(pid, 10.0):
                raise LocalKafkaError(f"broker process {pid} did not exit after SIGKILL")
        self._pid_file.unlink(missing_ok=True)
        return True

    def _live_pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _is_our_broker(pid):
            return pid
        self._pid_file.unlink(missing_ok=True)
        return None

    def _wait_until_answering(self, alive: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise LocalKafkaError(
                    f"the broker exited during start-up; last lines of {self.log_file}:\n"
                    + self._log_tail()
                )
            if broker_answers(self.bootstrap, timeout=1.0):
                return
            time.sleep(0.2)
        self.stop()
        raise LocalKafkaError(
            f"the broker did not answer on {self.bootstrap} within {timeout:.0f}s; "
            f"last lines of {self.log_file}:\n" + self._log_tail()
        )

    def _log_tail(self) -> str:
        try:
            return _tail(self.log_file.read_text(errors="replace"))
        except OSError:
            return "(no broker log)"


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


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _is_our_broker(pid):
            return True
        time.sleep(0.1)
    return False
