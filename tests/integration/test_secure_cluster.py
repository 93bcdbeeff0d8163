"""A secured 3-node cluster as production runs one: SASL_SSL with SCRAM users, ACLs per role.

One cluster for the whole module (started by `local-kafka --brokers 3 --secure`, stopped by pid at
the end): users site-a, site-b and top with their ACLs; site-a's credentials publish site-a and
are refused site-b; top's consumer converges into PostgreSQL; brokers stop and start under a
live poller, consumer and churn without losing an acknowledged record; no password is printed.
Every component runs as the `cascade-connector` process a user runs, its output in a log file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.config import KafkaSettings, load_settings
from connector.dev import free_port, free_port_run
from connector.dev.demo.observe import SinkReader, StatusMap, compare, metric_total, truth
from connector.dev.demo.processes import Processes, child_env, http_json, http_text
from connector.dev.local_kafka import ADMIN_USER, PORTS_PER_NODE, LocalKafka
from connector.dev.sim import RunningSim, start_sim
from connector.errors import ConnectorError
from connector.kafka.acls import (
    AclDriftError,
    consumer_acls,
    describe_acls,
    ensure_acls,
    site_acls,
)
from connector.kafka.cluster import delete_group, under_replicated
from connector.kafka.group_consumer import Consumer
from connector.kafka.reader import TopicReader
from connector.kafka.topics import ensure_site_topic
from tests.support import wait_for

KINDS = ("server", "volume", "port")
USERS = ("site-a", "site-b", "top")
GROUP = "cascade-top"
PREFIX = "cascade.status"


@dataclass
class Deployment:
    """The cluster, its users' settings files, the two sites, and where logs go."""

    cluster: LocalKafka
    settings: dict[str, Path]  #: user -> settings file
    sims: dict[str, RunningSim]
    logs: Path
    env: dict[str, str]
    #: the command lines of the processes `local-kafka start` ran (see ArgvWatch)
    start_argvs: set[str]

    def cli(self, name: str, user: str, *args: str, timeout: float = 60) -> Result:
        """Run `cascade-connector --config <user's settings> ARGS`, output to logs/<name>.log."""
        return self.clis({name: (user, *args)}, timeout)[name]

    def clis(self, runs: Mapping[str, tuple[str, ...]], timeout: float = 60) -> dict[str, Result]:
        """Several `cli` runs side by side: name -> (user, *args)."""
        started = time.monotonic()
        procs = {}
        for name, (user, *args) in runs.items():
            with (self.logs / f"{name}.log").open("w") as out:
                procs[name] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "connector",
                        "--config",
                        str(self.settings[user]),
                        *args,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
        results = {}
        for name, proc in procs.items():
            try:
                code = proc.wait(max(1.0, started + timeout - time.monotonic()))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            output = (self.logs / f"{name}.log").read_text()
            results[name] = Result(code, output, time.monotonic() - started)
        return results

    def consumer_acls(self, name: str, principal: str, *more: str) -> Result:
        """`acls ensure --consumer --group GROUP --principal PRINCIPAL MORE`, as the admin."""
        command = ("acls", "ensure", "--consumer", "--group", GROUP, "--principal", principal)
        return self.cli(name, ADMIN_USER, *command, *more)

    def local_kafka(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`cascade-connector local-kafka --port P --state-dir S ARGS` on this cluster."""
        command = ["local-kafka", "--port", str(self.cluster.port)]
        command += ["--state-dir", str(self.cluster.state_dir), *args]
        return subprocess.run(
            [sys.executable, "-m", "connector", *command],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def kafka(self, user: str = ADMIN_USER) -> KafkaSettings:
        return load_settings(self.settings[user]).kafka

    def truth(self, site: str) -> StatusMap:
        return truth({site: self.sims[site].url}, KINDS)


@dataclass
class Result:
    returncode: int
    output: str
    seconds: float


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("secure")
    logs = root / "logs"
    logs.mkdir()
    port = free_port_run(3 * PORTS_PER_NODE)
    cluster = LocalKafka(port=port, state_dir=root / "state")
    local_kafka = [
        sys.executable,
        "-m",
        "connector",
        "local-kafka",
        "--port",
        str(port),
        "--state-dir",
        str(root / "state"),
    ]
    with ArgvWatch(str(root / "state")) as watch:
        started = subprocess.run(
            [*local_kafka, "start", "--brokers", "3", "--secure"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    sims: dict[str, RunningSim] = {}
    try:
        (logs / "local-kafka-start.log").write_text(started.stdout + started.stderr)
        if started.returncode != 0:
            pytest.fail(f"could not start the secure cluster:\n{started.stderr[-3000:]}")
        bootstrap, admin_file = started.stdout.splitlines()[:2]
        assert bootstrap == cluster.bootstrap
        settings = {ADMIN_USER: Path(admin_file)}
        # The CLI's user add runs beside the API's (a second of Python start-up saved).
        add_top = subprocess.Popen(
            [*local_kafka, "user", "add", "top"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for user in ("site-a", "site-b"):
                settings[user] = cluster.add_user(user)
            added, errors = add_top.communicate(timeout=60)
        finally:
            if add_top.poll() is None:
                add_top.kill()
                add_top.wait()
        assert add_top.returncode == 0, errors
        settings["top"] = Path(added.strip())
        clouds = root / "clouds.yaml"
        for site in ("site-a", "site-b"):
            sims[site] = start_sim(site, servers=60, volumes=60, ports=60)
            sims[site].write_clouds_yaml(clouds)
        env = child_env({"OS_CLIENT_CONFIG_FILE": str(clouds)})
        deployment = Deployment(cluster, settings, sims, logs, env, watch.seen)
        admin = deployment.kafka()
        for site in ("site-a", "site-b"):
            ensure_acls(admin, site_acls(admin, f"User:{site}", site))
        out = deployment.consumer_acls("acls-ensure-top", "User:top")
        assert out.returncode == 0, out.output
        assert "granted: ALLOW User:top READ on group cascade-top" in out.output
        yield deployment
    finally:
        for sim in sims.values():
            sim.stop()
        # Its files are thrown away: a clean shutdown buys nothing, and the last two nodes,
        # stopping together, wait for a quorum that is going too (about 7 s) before they exit.
        cluster.stop(timeout=1.0)


@pytest.fixture(scope="module")
def site_a_published(deployment: Deployment) -> Result:
    """site-a's poller, once, with site-a's credentials (creates and fills its topic)."""
    return deployment.cli("produce-site-a-once", "site-a", "produce", "--site", "site-a", "--once")


def test_site_credentials_publish_their_own_site_only(
    deployment: Deployment, site_a_published: Result
) -> None:
    assert site_a_published.returncode == 0, site_a_published.output
    assert end_offsets(deployment, "site-a"), "site-a's topic holds site-a's records"

    # site-b's topic exists (its own poller may create it, here the administrator does).
    assert ensure_site_topic(deployment.kafka(), "site-b").created
    refused = deployment.cli(
        "produce-site-b-as-site-a", "site-a", "produce", "--site", "site-b", "--once", timeout=60
    )
    assert refused.returncode == 4, refused.output
    assert refused.seconds < 30
    assert "not authorized" in refused.output and "cascade.status.site-b" in refused.output
    assert sum(end_offsets(deployment, "site-b").values()) == 0, "site-b's topic holds nothing"


def test_wrong_password_and_untrusted_ca_are_named(deployment: Deployment, tmp_path: Path) -> None:
    good = deployment.settings["site-a"].read_text()
    wrong = tmp_path / "wrong-password.toml"
    wrong.write_text(re.sub(r'sasl_password = ".*"', 'sasl_password = "not-the-password"', good))
    untrusted = tmp_path / "untrusted.toml"
    untrusted.write_text(re.sub(r"ssl_ca_location = .*\n", "", good))
    deployment.settings["wrong"] = wrong
    deployment.settings["untrusted"] = untrusted

    out = deployment.clis(
        {
            "wrong-password": ("wrong", "topics", "describe", "--site", "site-a"),
            "untrusted-ca": ("untrusted", "topics", "describe", "--site", "site-a"),
        }
    )
    wrong_password, untrusted_ca = out["wrong-password"], out["untrusted-ca"]
    assert wrong_password.returncode == 4
    assert "site-a" in wrong_password.output and "authentication" in wrong_password.output
    assert untrusted_ca.returncode == 4
    assert "certificate verify failed" in untrusted_ca.output
    assert "ssl_ca_location" in untrusted_ca.output


def test_acl_drift_is_reported_then_fixed(deployment: Deployment) -> None:
    admin = deployment.kafka()
    principal = "User:drifting"
    as_site = site_acls(admin, principal, "site-a")
    assert ensure_acls(admin, as_site).created == as_site
    as_consumer = consumer_acls(admin, principal, GROUP, "cascade.deadletter")
    with pytest.raises(AclDriftError) as drift:
        ensure_acls(admin, as_consumer)
    assert drift.value.report.missing == sorted(set(as_consumer) - set(as_site))
    assert drift.value.report.extra == sorted(set(as_site) - set(as_consumer))
    fixed = deployment.consumer_acls("acls-fix", principal, "--fix")
    assert fixed.returncode == 0, fixed.output
    assert "added: ALLOW User:drifting READ on group cascade-top" in fixed.output
    assert "removed: ALLOW User:drifting WRITE on topic cascade.status.site-a" in fixed.output
    assert describe_acls(admin, principal) == as_consumer


def test_top_consumer_converges_into_postgresql(
    deployment: Deployment, site_a_published: Result, postgres_database: str
) -> None:
    assert site_a_published.returncode == 0, site_a_published.output
    forget_group(deployment)
    out = deployment.cli(
        "consume-until-idle",
        "top",
        "consume",
        "--sink",
        postgres_database,
        "--until-idle",
        timeout=120,
    )
    assert out.returncode == 0, out.output
    sink = SinkReader(postgres_database)
    try:
        assert compare(deployment.truth("site-a"), sink.statuses()).equal
    finally:
        sink.close()


def test_brokers_stop_and_start_under_load_without_losing_a_record(
    deployment: Deployment, site_a_published: Result, postgres_database: str
) -> None:
    assert site_a_published.returncode == 0, site_a_published.output
    forget_group(deployment)
    tail = Tail(deployment.kafka(), f"{PREFIX}.site-a")
    poller_port, consumer_port = free_port(), free_port()
    procs = Processes(
        deployment.logs, {**deployment.env, "CASCADE_SITE_HEARTBEAT_INTERVAL": "3600"}
    )
    churn = Churn(deployment.sims["site-a"])
    sink = SinkReader(postgres_database)
    try:
        procs.start(
            "live-poller",
            "--config",
            str(deployment.settings["site-a"]),
            "produce",
            "--site",
            "site-a",
            "--interval",
            "0.5",
            "--resync-interval",
            "5",
            "--metrics-port",
            str(poller_port),
        )
        procs.start(
            "live-consumer",
            "--config",
            str(deployment.settings["top"]),
            "consume",
            "--sink",
            postgres_database,
            "--metrics-port",
            str(consumer_port),
        )
        poller = f"http://127.0.0.1:{poller_port}/metrics"
        consumer = f"http://127.0.0.1:{consumer_port}/metrics"
        wait_for(
            live(
                procs,
                lambda: (
                    produced(poller) > 0 and scrape(consumer, "cascade_consumer_records_total") > 0
                ),
            ),
            90,
            "the live poller to publish and the live consumer to apply records",
        )
        churn.start()
        tail.start()

        def lose(node: int) -> None:
            """Stop `node`; the poller and the consumer go on (both make progress)."""
            published = produced(poller)
            applied = scrape(consumer, "cascade_consumer_records_total")
            assert deployment.local_kafka("stop", "--node", str(node)).stdout == "stopped\n"
            wait_for(
                live(
                    procs,
                    lambda: (
                        produced(poller) > published
                        and scrape(consumer, "cascade_consumer_records_total") > applied
                    ),
                ),
                90,
                f"the poller and consumer to go on without node {node}",
            )

        lose(2)
        assert deployment.local_kafka("start", "--node", "2").returncode == 0
        wait_for(
            live(procs, lambda: not under_replicated(deployment.kafka(), timeout=5)),
            90,
            "node 2 to be back in every ISR",
        )
        # With node 3 gone, every write needs the restarted node 2 in its ISR (min 2 of 3).
        lose(3)
        status = deployment.local_kafka("status")
        assert status.returncode == 1 and "node 3: not running" in status.stdout
        assert re.search(r"node 2: running pid \d+, answering", status.stdout)
        churn.stop()

        wait_for(
            live(procs, lambda: compare(deployment.truth("site-a"), sink.statuses()).equal),
            90,
            "the sink to equal the truth",
        )
        # Every record the poller had acknowledged is in the topic once (idempotence: no
        # duplicates) and committed by the consumer. Counted as read, not from offsets: each
        # transaction's commit marker takes an offset too, and compaction may drop records.
        wait_for(
            live(procs, lambda: tail.records == produced(poller)),
            90,
            "the topic to hold exactly what the poller published",
        )
        assert scrape(poller, "cascade_site_produce_errors_total") == 0
        wait_for(
            live(procs, lambda: committed(deployment) == end_offsets(deployment, "site-a")),
            90,
            "the consumer to commit everything",
        )
        assert churn.changes > 0
    finally:
        churn.stop()
        tail.stop()
        procs.stop_all()
        sink.close()


def sasl_password(settings: Path) -> str:
    secret = load_settings(settings).kafka.sasl_password
    assert secret is not None, f"{settings} names no SASL password"
    return secret.get_secret_value()


def test_no_password_in_any_log_or_config_output(
    deployment: Deployment, site_a_published: Result
) -> None:
    passwords = {
        user: sasl_password(path)
        for user, path in deployment.settings.items()
        if user in (ADMIN_USER, *USERS)
    }
    runs = {f"config-{user}": (user, "config") for user in (ADMIN_USER, *USERS)}
    outputs = {name: result.output for name, result in deployment.clis(runs).items()}
    logs = [*deployment.logs.glob("*.log"), *deployment.cluster.home.glob("**/kafka.log")]
    assert len(logs) >= 8
    outputs |= {str(path): path.read_text(errors="replace") for path in logs}
    for where, text in outputs.items():
        for user, password in passwords.items():
            assert password not in text, f"{user}'s password in {where}"
    assert '"sasl_password": "**' in outputs["config-site-a"]


def test_admin_password_is_never_on_a_command_line(deployment: Deployment) -> None:
    admin = deployment.kafka().sasl_password
    assert admin is not None
    formats = [a for a in deployment.start_argvs if "StorageTool" in a or "format.args" in a]
    assert len(formats) == 3, "the watch saw each node's storage format (it adds the admin)"
    for argv in deployment.start_argvs:
        assert admin.get_secret_value() not in argv and "--add-scram" not in argv, argv


class ArgvWatch:
    """The command lines (as `ps` shows them) of every process that names `marker`, sampled
    every 0.1 s while in the `with` block (a storage format, a JVM, runs for over a second; a
    sample costs about 3 ms of CPU)."""

    def __init__(self, marker: str) -> None:
        self._marker = marker.encode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.seen: set[str] = set()

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        argv = fh.read()
                except OSError:
                    continue  # gone meanwhile
                if self._marker in argv:
                    self.seen.add(argv.replace(b"\0", b" ").decode(errors="replace"))
            self._stop.wait(0.1)


class Every:
    """`step()` on a thread every `period` seconds from `start()` until `stop()`."""

    period = 0.2

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.period)


class Churn(Every):
    """Changes at the site, a few every 0.2 s, until stopped."""

    def __init__(self, sim: RunningSim) -> None:
        super().__init__()
        self._url = f"{sim.url}/_sim/churn"
        self.changes = 0

    def step(self) -> None:
        self.changes += sum(http_json(self._url, {"changes": 5}).values())


class Tail(Every):
    """Counts the committed records written to a topic from its creation on, as they arrive
    (before compaction could drop any), until stopped."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        super().__init__()
        self._reader = TopicReader(kafka, topic, from_beginning=False)
        self.records = 0

    def stop(self) -> None:
        super().stop()
        self._reader.close()

    def step(self) -> None:
        try:
            for _msg in self._reader.messages(stop_at_end=True, poll=0.2):
                self.records += 1
        except ConnectorError:
            pass  # a broker stopped by the test; the next read goes on after the last record


def live(procs: Processes, condition: Callable[[], bool]) -> Callable[[], bool]:
    """`condition` for wait_for, raising at once if a child died; a metrics port not open yet
    or a broker moving counts as "not yet"."""

    def check() -> bool:
        procs.check_alive()
        try:
            return condition()
        except (OSError, ConnectorError):
            return False

    return check


def scrape(url: str, name: str) -> float:
    return metric_total(http_text(url), name)


def produced(url: str) -> float:
    """Records the poller handed to Kafka: changes, tombstones and heartbeats."""
    text = http_text(url)
    return sum(
        metric_total(text, name)
        for name in (
            "cascade_site_changes_published_total",
            "cascade_site_tombstones_total",
            "cascade_site_heartbeats_total",
        )
    )


def end_offsets(deployment: Deployment, site: str) -> dict[int, int]:
    consumer = Consumer(deployment.kafka(), "offset-probe")
    try:
        topic = f"{PREFIX}.{site}"
        parts = consumer.partitions_matching(f"^{re.escape(topic)}$")
        return {p: consumer.watermarks(topic, p)[1] for _topic, p in parts}
    finally:
        consumer.close()


def committed(deployment: Deployment) -> dict[int, int]:
    consumer = Consumer(deployment.kafka(), GROUP)
    try:
        parts = consumer.partitions_matching(f"^{re.escape(PREFIX)}\\.site-a$")
        return {p: offset for (_topic, p), offset in consumer.committed(parts).items()}
    finally:
        consumer.close()


def forget_group(deployment: Deployment) -> None:
    """The top group starts over (a fresh sink must be filled from the start of the topics)."""
    delete_group(deployment.kafka(), GROUP)
