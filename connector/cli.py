"""The `cascade-connector` command line: parse options, load settings, call one function.

Every command's work lives elsewhere; a command here only turns flags into settings and a return
value into output and an exit code. Exit codes: 0 done, 1 failure, 2 bad usage or settings,
3 local broker trouble, 4 Kafka trouble; `status` has its own (0 fresh, 1 stale, 2 bad settings,
3 the sink cannot be read). No output names a password: everything printed goes through
connector.redact.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from connector import __version__
from connector.config import Settings, load_settings
from connector.errors import ConnectorError
from connector.ops.logging import setup_logging
from connector.redact import redact, redact_text

F = TypeVar("F", bound=Callable[..., Any])

#: `status` exit code when the sink cannot be read (as a monitoring probe's "unknown").
STATUS_UNREADABLE = 3


class _Cli(click.Group):
    """Turns a ConnectorError into one clear line on stderr and the error's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConnectorError as exc:
            click.echo(redact_text(f"error: {exc}"), err=True)
            sys.exit(exc.exit_code)


@dataclass
class _Context:
    config_file: Path | None

    def settings(self, flags: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
        return load_settings(self.config_file, os.environ, flags)


def _parse_passthrough(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value (a librdkafka setting), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying `decorators` (options, in the order --help lists them)."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


#: --bootstrap and -X key=value (librdkafka passthrough), for commands that talk to Kafka.
kafka_options = _options(
    click.option(
        "--bootstrap",
        default=None,
        metavar="HOST:PORT",
        help="Kafka bootstrap servers [env CASCADE_KAFKA_BOOTSTRAP; default 127.0.0.1:9092].",
    ),
    click.option(
        "-X",
        "librdkafka",
        multiple=True,
        callback=_parse_passthrough,
        metavar="KEY=VALUE",
        help="librdkafka setting, passed through unchanged (repeatable).",
    ),
)


def kafka_flags(bootstrap: str | None, librdkafka: dict[str, str]) -> dict[str, Any]:
    return {"bootstrap": bootstrap, "librdkafka": librdkafka or None}


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cascade-connector")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CASCADE_CONFIG",
    help="TOML settings file [env CASCADE_CONFIG].",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format", default="text", show_default=True, type=click.Choice(["text", "json"])
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, log_level: str, log_format: str) -> None:
    """Keep the top layer of a cascading OpenStack in sync with its sites, over Kafka."""
    setup_logging(log_level, "json" if log_format == "json" else "text")
    ctx.obj = _Context(config_file)


@cli.command("config")
@kafka_options
@click.pass_obj
def show_config(obj: _Context, bootstrap: str | None, librdkafka: dict[str, str]) -> None:
    """Print the effective settings (file, environment and flags merged) as JSON, with every
    password and secret replaced by ***."""
    settings = obj.settings({"kafka": kafka_flags(bootstrap, librdkafka)})
    click.echo(json.dumps(redact(settings.model_dump(mode="json")), indent=2))


@cli.command("status")
@click.option(
    "--sink", "sink_url", default=None, metavar="URL", help="SQL sink [env CASCADE_SINK_URL]."
)
@click.option("--site", default=None, help="Report this site only.")
@click.option(
    "--stale-after",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Heartbeat age in seconds from which a site is stale.",
)
@click.option(
    "--consumer",
    "consumers",
    multiple=True,
    metavar="URL",
    help="A top consumer's /metrics URL (repeat for every member): adds the changes pending "
    "per site and the age of the oldest.",
)
@click.pass_obj
def status(
    obj: _Context,
    sink_url: str | None,
    site: str | None,
    stale_after: float,
    consumers: tuple[str, ...],
) -> None:
    """Objects per site, kind and status, and each site's heartbeat age (and, with --consumer,
    what waits for it).

    Exit 0 when every site is fresh, 1 when one is stale, 2 for bad settings, 3 when the sink
    cannot be read (unreachable, no such database): a probe can tell "stale" from "broken"."""
    from connector.sinks import SinkBackpressureError, SinkError
    from connector.sinks.status import read_status
    from connector.top.consumer_metrics import read_pending

    settings = obj.settings({"sink": {"url": sink_url}})
    pending = read_pending(consumers) if consumers else None
    try:
        report = read_status(settings.sink.url, site=site, stale_after=stale_after, pending=pending)
    except (SinkError, SinkBackpressureError) as exc:
        click.echo(redact_text(f"error: {exc}"), err=True)
        sys.exit(STATUS_UNREADABLE)
    click.echo(report.render())
    sys.exit(1 if report.stale_sites else 0)


def _topic_flags(
    bootstrap: str | None, librdkafka: dict[str, str], prefix: str | None, **more: Any
) -> dict[str, Any]:
    return {"kafka": {**kafka_flags(bootstrap, librdkafka), "topic_prefix": prefix, **more}}


@cli.command("audit")
@kafka_options
@click.option("--prefix", default=None, help="Site topic prefix [env CASCADE_KAFKA_TOPIC_PREFIX].")
@click.option("--site", required=True, help="The site to audit; its topic is <prefix>.<site>.")
@click.option(
    "--sink", "sink_url", default=None, metavar="URL", help="SQL sink [env CASCADE_SINK_URL]."
)
@click.option("--repair", is_flag=True, help="Write the fixes through the sink, then audit again.")
@click.option(
    "--against-site",
    is_flag=True,
    help="Also compare the topic with a fresh listing of the site's APIs (clouds.yaml entry "
    "site.cloud, kinds site.kinds); that drift is the poller's to fix, reported only.",
)
@click.pass_obj
def audit(
    obj: _Context,
    bootstrap: str | None,
    librdkafka: dict[str, str],
    prefix: str | None,
    site: str,
    sink_url: str | None,
    repair: bool,
    against_site: bool,
) -> None:
    """Compare the top layer's rows of a site with the last record per key in its topic; print
    the drift (missing, extra, different: counts and first keys). Exit 0 no drift (after
    --repair: none left), 1 drift, 2 bad settings, 3 the sink or the site could not be read,
    4 Kafka trouble."""
    from connector.sinks import SinkBackpressureError, SinkError, open_sql_sink
    from connector.sinks.sql_audit import site_rows
    from connector.site.snapshot import SiteListingFailed, list_site
    from connector.top import audit as audits

    flags = {**_topic_flags(bootstrap, librdkafka, prefix), "sink": {"url": sink_url}}
    settings = obj.settings({**flags, "site": {"name": site}})
    try:
        sink = open_sql_sink(settings.sink)
        try:
            topic = audits.read_topic(settings, site)
            drift = audits.compare(site, topic, site_rows(sink, site))
            _echo_lines(drift.lines())
            if repair and drift.found:
                written = audits.repair(sink, drift)
                planned = len(drift.apply) + len(drift.restore)
                click.echo(f"repaired: {written} of {planned} rows written; audited again:")
                drift = audits.audit_site(settings, sink, site)
                _echo_lines(drift.lines())
            drifts = [drift]
            if against_site:
                drifts.append(audits.compare_listing(site, topic, list_site(settings.site)))
                _echo_lines(drifts[-1].lines())
        finally:
            sink.close()
    except (SinkError, SinkBackpressureError, SiteListingFailed) as exc:
        click.echo(redact_text(f"error: {exc}"), err=True)
        sys.exit(STATUS_UNREADABLE)
    sys.exit(1 if any(d.found for d in drifts) else 0)


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


_prefix_option = click.option(
    "--prefix",
    default=None,
    help="Site topic prefix [env CASCADE_KAFKA_TOPIC_PREFIX; default cascade.status].",
)
#: Kafka, the prefix and the site of a command about one site's topic (<prefix>.<site>).
_site_topic_options = _options(
    kafka_options,
    _prefix_option,
    click.option("--site", required=True, help="Site name; its topic is <prefix>.<site>."),
)


@cli.group("topics")
def topics() -> None:
    """Create and check the compacted site topics (<prefix>.<site>)."""


@topics.command("ensure")
@_options(
    kafka_options,
    _prefix_option,
    click.option(
        "--site",
        "sites",
        required=True,
        multiple=True,
        help="Site name; its topic is <prefix>.<site>. Repeat for several (one request for all).",
    ),
)
@click.option("--fix", is_flag=True, help="Set the expected config on an existing topic.")
@click.option("--partitions", type=int, default=None, help="Partitions of a new topic.")
@click.option(
    "--replication-factor",
    type=int,
    default=None,
    help="Replicas of a new topic [min(3, brokers)].",
)
@click.option(
    "--min-insync-replicas",
    type=int,
    default=None,
    help="min.insync.replicas [2 from 3 replicas on, else 1].",
)
@click.pass_obj
def topics_ensure(
    obj: _Context,
    bootstrap: str | None,
    librdkafka: dict[str, str],
    prefix: str | None,
    sites: tuple[str, ...],
    fix: bool,
    partitions: int | None,
    replication_factor: int | None,
    min_insync_replicas: int | None,
) -> None:
    """Create the site topics, or check their config: exit 1 naming every setting that differs.
    Also creates each site's lease topic (<prefix>-lease.<site>), which its pollers elect
    through."""
    from connector.kafka.topics import ensure_lease_topics, ensure_site_topics

    flags = _topic_flags(
        bootstrap,
        librdkafka,
        prefix,
        partitions=partitions,
        replication_factor=replication_factor,
        min_insync_replicas=min_insync_replicas,
    )
    kafka = obj.settings(flags).kafka
    reports = ensure_site_topics(kafka, list(sites), fix=fix) + ensure_lease_topics(
        kafka, list(sites)
    )
    for report in reports:
        for line in report.lines():
            click.echo(line)


@topics.command("describe")
@_site_topic_options
@click.pass_obj
def topics_describe(
    obj: _Context, bootstrap: str | None, librdkafka: dict[str, str], prefix: str | None, site: str
) -> None:
    """Print the site topic's partitions and config."""
    from connector.kafka.topics import describe_site_topic

    settings = obj.settings(_topic_flags(bootstrap, librdkafka, prefix))
    for line in describe_site_topic(settings.kafka, site).lines():
        click.echo(line)


@cli.group("schemas")
def schemas() -> None:
    """The Avro schemas of the status record, every version kept."""


@schemas.command("show")
def schemas_show() -> None:
    """Print every shipped schema version with its fingerprint."""
    from connector.records.schemas import describe_schemas

    for line in describe_schemas():
        click.echo(line)


@schemas.command("check")
def schemas_check() -> None:
    """Check that the current schema reads every shipped version; exit 1 naming each problem."""
    from connector.records.schemas import check_shipped, shipped_schemas

    problems = check_shipped()
    for problem in problems:
        click.echo(problem)
    if problems:
        sys.exit(1)
    files = ", ".join(s.file for s in shipped_schemas())
    click.echo(f"ok: the current schema reads {files}")


@cli.command("tail")
@_site_topic_options
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record, not the end.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after N records.")
@click.option("--exit-at-end", is_flag=True, help="Stop once every partition is read to its end.")
@click.option(
    "--schema-registry",
    "schema_registry_url",
    default=None,
    metavar="URL",
    help="Schema registry for registry-framed values [env CASCADE_KAFKA_SCHEMA_REGISTRY_URL].",
)
@click.pass_obj
def tail(
    obj: _Context,
    bootstrap: str | None,
    librdkafka: dict[str, str],
    prefix: str | None,
    site: str,
    from_beginning: bool,
    limit: int | None,
    exit_at_end: bool,
    schema_registry_url: str | None,
) -> None:
    """Print a site topic as JSON lines: key, partition, offset, value (null for a tombstone),
    or error for a record that cannot be decoded."""
    from connector.tail import tail_site

    flags = _topic_flags(bootstrap, librdkafka, prefix, schema_registry_url=schema_registry_url)
    tail_site(
        obj.settings(flags).kafka,
        site,
        click.echo,
        from_beginning=from_beginning,
        limit=limit,
        stop_at_end=exit_at_end,
    )


@cli.group("local-kafka")
@click.option(
    "--port",
    default=9092,
    show_default=True,
    type=click.IntRange(1024, 65534),
    help="Client port of node 1; node K listens on port+2(K-1), its controller on the next.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where data and logs live [default: $XDG_STATE_HOME/cascade-connector].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the fetched jars live [default: $XDG_CACHE_HOME/cascade-connector].",
)
@click.pass_context
def local_kafka(
    ctx: click.Context, port: int, state_dir: Path | None, cache_dir: Path | None
) -> None:
    """A real Apache Kafka (KRaft) on loopback, one node or a cluster, for development and
    tests."""
    from connector.dev.local_kafka import LocalKafka

    overrides: dict[str, Any] = {"port": port}
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    if cache_dir is not None:
        overrides["cache_dir"] = cache_dir
    ctx.obj = LocalKafka(**overrides)


_node_option = click.option(
    "--node", type=click.IntRange(min=1), default=None, help="Only this node (1..N)."
)


@local_kafka.command("start")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the nodes.")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="Nodes of a new cluster (combined broker+controller; default 1).",
)
@click.option(
    "--secure",
    is_flag=True,
    help="A new cluster with SASL_SSL (SCRAM-SHA-512), TLS and ACLs; prints the admin's "
    "settings file on a second line.",
)
@_node_option
@click.pass_obj
def local_kafka_start(
    broker: Any, timeout: float, brokers: int | None, secure: bool, node: int | None
) -> None:
    """Fetch the jars once, format storage once, start the nodes, wait until they answer."""
    from dataclasses import replace

    from connector.dev.local_kafka import ADMIN_USER

    cluster = replace(broker, nodes=brokers, secure=secure)
    click.echo(cluster.start(timeout=timeout, node=node))
    if cluster.shape.secure:
        click.echo(cluster.settings_file(ADMIN_USER))


@local_kafka.command("stop")
@_node_option
@click.pass_obj
def local_kafka_stop(broker: Any, node: int | None) -> None:
    """Stop the nodes (or one) and wait for their processes to end."""
    click.echo("stopped" if broker.stop(node=node) else "not running")


@local_kafka.command("status")
@click.pass_obj
def local_kafka_status(broker: Any) -> None:
    """Say which nodes run and answer; exit 1 when one is not running or not answering."""
    st = broker.status()
    if not st.running:
        click.echo(f"not running (state in {st.home})")
        sys.exit(1)
    for node in st.nodes:
        if not node.running:
            click.echo(f"node {node.node}: not running ({node.address})")
            continue
        health = "answering" if node.answering else "NOT answering"
        click.echo(f"node {node.node}: running pid {node.pid}, {health} on {node.address}")
    if st.under_replicated:
        click.echo(f"under-replicated partitions: {', '.join(st.under_replicated)}")
    kind = "secure (SASL_SSL)" if st.secure else "plaintext"
    click.echo(f"{kind}, bootstrap {st.bootstrap} (state in {st.home})")
    sys.exit(0 if st.answering else 1)


@local_kafka.group("user")
def local_kafka_user() -> None:
    """SCRAM users of a secure local cluster."""


@local_kafka_user.command("add")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Give an existing user a new password.")
@click.pass_obj
def local_kafka_user_add(broker: Any, name: str, rotate: bool) -> None:
    """Create SCRAM user NAME with a random password; print the path of its settings file
    (usable with --config)."""
    click.echo(broker.add_user(name, rotate=rotate))


@cli.group("acls")
def acls() -> None:
    """Grant and check the ACLs each role needs (run with an administrator's settings)."""


_principal_option = click.option(
    "--principal", required=True, metavar="User:NAME", help="Who the ACLs are for."
)


@acls.command("ensure")
@kafka_options
@_prefix_option
@_principal_option
@click.option("--site", default=None, help="A site poller's ACLs, for this site.")
@click.option("--consumer", is_flag=True, help="The top consumer's ACLs.")
@click.option("--group", default=None, help="--consumer: its group [default consumer.group].")
@click.option(
    "--dead-letter-topic", default=None, help="--consumer: [default consumer.dead_letter_topic]"
)
@click.option("--fix", is_flag=True, help="Add missing and remove extra ACLs.")
@click.pass_obj
def acls_ensure(
    obj: _Context,
    bootstrap: str | None,
    librdkafka: dict[str, str],
    prefix: str | None,
    principal: str,
    site: str | None,
    consumer: bool,
    group: str | None,
    dead_letter_topic: str | None,
    fix: bool,
) -> None:
    """Grant a role's ACLs to a principal that has none, or report how its ACLs differ (exit 1);
    --fix applies the role's table."""
    from connector.kafka.acls import consumer_acls, ensure_acls, site_acls

    if (site is None) == (not consumer):
        raise click.UsageError("give exactly one of --site NAME and --consumer")
    settings = obj.settings(
        {
            **_topic_flags(bootstrap, librdkafka, prefix),
            "consumer": {"group": group, "dead_letter_topic": dead_letter_topic},
        }
    )
    if site is not None:
        expected = site_acls(settings.kafka, principal, site)
    else:
        options = settings.consumer
        expected = consumer_acls(
            settings.kafka, principal, options.group, options.dead_letter_topic
        )
    for line in ensure_acls(settings.kafka, expected, fix=fix).lines():
        click.echo(line)


@acls.command("describe")
@kafka_options
@click.option("--principal", default=None, metavar="User:NAME", help="Only this principal's.")
@click.pass_obj
def acls_describe(
    obj: _Context, bootstrap: str | None, librdkafka: dict[str, str], principal: str | None
) -> None:
    """List the ALLOW ACLs, one per line."""
    from connector.kafka.acls import describe_acls

    settings = obj.settings({"kafka": kafka_flags(bootstrap, librdkafka)})
    for acl in describe_acls(settings.kafka, principal):
        click.echo(str(acl))


_metrics_port_option = click.option(
    "--metrics-port", type=int, default=None, help="Serve /metrics, /readyz and /livez."
)


@cli.command("consume")
@kafka_options
@click.option("--group", default=None, help="Consumer group id [default cascade-top].")
@click.option(
    "--sink",
    "sink_url",
    default=None,
    metavar="URL",
    help="sqlite:///PATH, postgresql://..., or http(s)://... [env CASCADE_SINK_URL].",
)
@click.option(
    "--on-delete",
    type=click.Choice(["delete", "mark"]),
    default=None,
    help="SQL sinks, on a tombstone: delete the row or mark it deleted.",
)
@click.option("--max-rate", type=float, default=None, help="Records per second at most.")
@click.option(
    "--max-batches-per-second",
    type=float,
    default=None,
    help="Batches (sink calls) per second at most.",
)
@click.option("--batch-size", type=int, default=None, help="Changes per sink call at most.")
@click.option(
    "--batch-wait",
    "batch_wait_ms",
    type=int,
    default=None,
    metavar="MS",
    help="Milliseconds a site's window stays open at least [default 250].",
)
@click.option(
    "--max-window-wait",
    "max_window_wait_ms",
    type=int,
    default=None,
    metavar="MS",
    help="Milliseconds a storming site's window stays open at most [default 30000].",
)
@click.option(
    "--max-pending-keys",
    type=int,
    default=None,
    help="Keys waiting in memory before reading pauses [default 200000].",
)
@click.option("--dead-letter-topic", default=None, help="[default cascade.deadletter]")
@_metrics_port_option
@click.option(
    "--audit-interval",
    type=float,
    default=None,
    help="Seconds between periodic audits of the sites this member judges, as drift metrics "
    "(SQL sink) [default: none].",
)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit 0 once every assigned partition is applied and committed to its end.",
)
@click.pass_obj
def consume(
    obj: _Context,
    bootstrap: str | None,
    librdkafka: dict[str, str],
    group: str | None,
    sink_url: str | None,
    on_delete: str | None,
    max_rate: float | None,
    max_batches_per_second: float | None,
    batch_size: int | None,
    batch_wait_ms: int | None,
    max_window_wait_ms: int | None,
    max_pending_keys: int | None,
    dead_letter_topic: str | None,
    metrics_port: int | None,
    audit_interval: float | None,
    until_idle: bool,
) -> None:
    """Apply every site topic to the sink, coalesced per site, at a controlled rate."""
    from connector.top.service import run_consumer

    settings = obj.settings(
        {
            "kafka": kafka_flags(bootstrap, librdkafka),
            "sink": {"url": sink_url, "on_delete": on_delete},
            "consumer": {
                "group": group,
                "max_rate": max_rate,
                "max_batches_per_second": max_batches_per_second,
                "batch_size": batch_size,
                "batch_wait_ms": batch_wait_ms,
                "max_window_wait_ms": max_window_wait_ms,
                "max_pending_keys": max_pending_keys,
                "dead_letter_topic": dead_letter_topic,
                "metrics_port": metrics_port,
                "audit_interval_seconds": audit_interval,
            },
        }
    )
    run_consumer(settings, until_idle=until_idle)


@cli.command("produce")
@kafka_options
@click.option("--site", default=None, help="Site name [env CASCADE_SITE_NAME].")
@click.option("--cloud", default=None, help="clouds.yaml entry [default: the site name].")
@click.option("--interval", type=float, default=None, help="Seconds between incremental polls.")
@click.option("--resync-interval", type=float, default=None, help="Seconds between resyncs.")
@click.option("--kinds", default=None, help="Comma-separated kinds [default server,volume,port].")
@_metrics_port_option
@click.option("--once", is_flag=True, help="Resync every kind once, flush, exit.")
@click.option(
    "--instance-id",
    default=None,
    help="This poller's name among the site's pollers [default <host>:<pid>].",
)
@click.option(
    "--lease-timeout",
    type=float,
    default=None,
    help="Seconds before a silent active poller's lease passes to a standby [default 10].",
)
@click.option(
    "--notifications",
    "notifications_url",
    metavar="URL",
    default=None,
    help="Listen to the site's message bus (rabbit://...) and poll a kind early when notified. "
    "CASCADE_NOTIFICATIONS_URL does the same and keeps the password off the command line.",
)
@click.pass_obj
def produce(
    obj: _Context,
    bootstrap: str | None,
    librdkafka: dict[str, str],
    site: str | None,
    cloud: str | None,
    interval: float | None,
    resync_interval: float | None,
    kinds: str | None,
    metrics_port: int | None,
    once: bool,
    instance_id: str | None,
    lease_timeout: float | None,
    notifications_url: str | None,
) -> None:
    """Poll one site's APIs and publish its status changes to the site topic.

    Several processes may run for one site: the one holding the site's lease publishes, the
    others stand by and take over when it stops or goes silent."""
    from connector.site.runner import run_site

    site_flags = {
        "name": site,
        "cloud": cloud,
        "interval": interval,
        "resync_interval": resync_interval,
        "kinds": kinds,
        "metrics_port": metrics_port,
        "instance_id": instance_id,
        "lease_timeout": lease_timeout,
    }
    settings = obj.settings(
        {
            "kafka": kafka_flags(bootstrap, librdkafka),
            "site": site_flags,
            "notifications": {"url": notifications_url},
        }
    )
    run_site(settings, once=once)


def _object_counts(**defaults: int) -> Callable[[F], F]:
    """--servers, --volumes and --ports of a simulated site, with these defaults."""
    return _options(
        *(
            click.option(f"--{kind}", default=n, show_default=True, type=click.IntRange(0))
            for kind, n in defaults.items()
        )
    )


@cli.command("sim")
@click.option(
    "--site",
    "sites",
    required=True,
    multiple=True,
    help="Site name; also the clouds.yaml cloud name. Repeat it to serve several sites from "
    "this process, the i-th on PORT+i (any free port each when PORT is 0) with seed SEED+i.",
)
@click.option("--listen", default="127.0.0.1:8600", show_default=True, metavar="HOST:PORT")
@_object_counts(servers=1000, volumes=1000, ports=1000)
@click.option("--networks", type=click.IntRange(0), help="[default: ports/50, at least 1]")
@click.option("--routers", type=click.IntRange(0), help="[default: networks/4, at least 1]")
@click.option("--floatingips", type=click.IntRange(0), help="[default: servers/10]")
@click.option("--seed", default=0, show_default=True, help="Same seed, same data.")
@click.option("--token-ttl", default=3600.0, show_default=True, help="Token lifetime, seconds.")
@click.option(
    "--neutron-changed-since",
    type=click.Choice(["accept", "reject"]),
    default="reject",
    show_default=True,
    help="Honour Neutron's changed_since, or reject it with 400 (filter validation).",
)
@click.option(
    "--notify",
    metavar="URL",
    help="Send the services' notifications to this RabbitMQ (rabbit://USER:PASS@HOST:PORT/).",
)
@click.option(
    "--notify-loss",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of notifications dropped at random.",
)
@click.option(
    "--clock-skew",
    default=0.0,
    show_default=True,
    type=float,
    metavar="SECONDS",
    help="Run the site's clock this far ahead of this machine's (negative: behind).",
)
@click.option(
    "--write-clouds-yaml",
    "clouds_yaml",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Add this site to a clouds.yaml, so openstack.connect(cloud=SITE) reaches it.",
)
def sim(sites: tuple[str, ...], listen: str, clouds_yaml: Path | None, **options: Any) -> None:
    """Serve simulated OpenStack sites (Keystone, Nova, Cinder, Neutron) until SIGTERM."""
    from connector.dev.sim import run_sim

    run_sim(sites, listen, clouds_yaml=clouds_yaml, echo=click.echo, **options)


@cli.command("demo")
@click.option("--sites", type=click.IntRange(1, 26), default=2, show_default=True)
@_object_counts(servers=5000, volumes=5000, ports=10000)
@click.option(
    "--storm-flaps",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Times every object of site-a flaps in the restart storm.",
)
@click.option("--storm-seconds", type=click.FloatRange(1, 300), default=10.0, show_default=True)
@click.option(
    "--storm-changed",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    metavar="FRACTION",
    help="Fraction of the storm's objects that end in another status than they started in.",
)
@click.option(
    "--max-rate",
    type=click.FloatRange(1),
    default=10_000.0,
    show_default=True,
    help="The top layer's records/s limit.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.2),
    default=10.0,
    show_default=True,
    help="Seconds between the pollers' incremental polls.",
)
@click.option(
    "--bootstrap",
    default=None,
    metavar="HOST:PORT",
    help="Use this Kafka instead of starting the local broker.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where logs and the top-layer database go [default: a new temp dir].",
)
def demo(**options: Any) -> None:
    """The whole product on this machine: local Kafka, simulated sites, pollers, the top
    consumer into SQLite, a restart storm, and the accounting. Exit 1 if the sink does not
    converge to the sites' truth."""
    from connector.dev.demo.run import DemoOptions, run_demo

    try:
        converged = run_demo(DemoOptions(**options), echo=click.echo)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0 if converged else 1)


def main() -> None:
    cli(prog_name="cascade-connector")
