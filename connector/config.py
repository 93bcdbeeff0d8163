"""Typed settings for every part of the connector, and the one function that assembles them.

Settings come from three layers, later ones winning: a TOML config file, `CASCADE_<SECTION>_<FIELD>`
environment variables, and command-line flags. Only the CLI reads files and the environment; it
hands their contents to `load_settings`, which validates everything at once and raises a
ConfigError naming the field, the expected value, and where the wrong value came from.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connector.errors import ConfigError

# Each layer owns the settings of its own client; the app's settings assemble them.
from connector.kafka.settings import KafkaSettings
from connector.records.checks import resolve_kind_names, site_name_problem
from connector.redact import redact_text

__all__ = ["KafkaSettings", "Settings", "load_settings"]


class _Section(BaseModel):
    """A settings section: unknown keys are errors, never silently dropped; no inf or NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


SINK_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "http", "https")


class SinkSettings(_Section):
    """Where the top consumer applies changes, and how."""

    #: `sqlite:///PATH`, `postgresql://USER:PASSWORD@HOST:PORT/DB`, or `http(s)://...`.
    url: str = Field(default="sqlite:///cascade-status.sqlite", min_length=1)
    #: SQL sinks, on a tombstone: `mark` keeps the row with deleted=true and its sequence, so a
    #: replayed older update cannot bring it back; `delete` removes the row.
    on_delete: Literal["delete", "mark"] = "mark"
    #: HTTP sink: seconds to wait for the top-layer service to connect and to answer.
    timeout: float = Field(default=10.0, gt=0, le=300)
    #: HTTP sink: attempts after the first on connection errors and 5xx, with backoff.
    retries: int = Field(default=3, ge=0, le=10)
    #: Seconds the consumer waits before retrying a batch after a transient sink error, when the
    #: sink was not told how long (no Retry-After).
    retry_after: float = Field(default=5.0, gt=0, le=3600)
    #: Seconds one sink call may take in all (SQL statements and bisection, HTTP attempts and
    #: their backoff); past it the batch is retried later, as backpressure. Must stay below
    #: librdkafka's `max.poll.interval.ms` (default 300 s): the consumer does not poll meanwhile.
    apply_timeout: float = Field(default=120.0, gt=0, le=3600)
    #: PostgreSQL: seconds one statement may run (`statement_timeout`, set per transaction).
    statement_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: PostgreSQL: seconds a statement may wait for a row lock (`lock_timeout`).
    lock_timeout: float = Field(default=5.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if scheme.lower() not in SINK_SCHEMES or not sep:
            expected = ", ".join(f"{s}://" for s in SINK_SCHEMES)
            raise ValueError(f"expected a URL starting with one of {expected}; got {value!r}")
        if scheme.lower() == "sqlite" and rest.strip("/") == "":
            # An in-memory database would be applied to and committed past, then lost on exit.
            raise ValueError(f"expected sqlite:///PATH to a file; got {value!r}")
        if scheme.lower().startswith("http") and not rest.split("/", 1)[0].rpartition("@")[2]:
            raise ValueError(f"expected a host in the URL; got {value!r}")
        return value


class SiteSettings(_Section):
    """The site poller: which site, how to reach its APIs, what to poll and how often."""

    #: Site name: the topic suffix and the first part of every key. Required by `produce`.
    name: str | None = None
    #: clouds.yaml entry with the site's credentials; default: the site name.
    cloud: str | None = Field(default=None, min_length=1)
    #: Seconds between incremental polls of a kind.
    interval: float = Field(default=10.0, gt=0)
    #: Seconds between full resyncs of a kind (full listing, diff, tombstones for vanished ids).
    resync_interval: float = Field(default=600.0, gt=0)
    #: Resource kinds to poll (names from the kinds table; plural forms are accepted).
    kinds: list[str] = Field(default_factory=lambda: ["server", "volume", "port"], min_length=1)
    #: Seconds the incremental watermark is moved back, so clock skew loses no change.
    clock_skew: float = Field(default=3.0, ge=0)
    #: Seconds between site heartbeats.
    heartbeat_interval: float = Field(default=5.0, gt=0)
    #: Port for /metrics, /readyz, /livez; 0 picks a free one; unset: no server.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: Address the metrics server listens on: loopback unless set (`0.0.0.0` or `::` for every
    #: interface, as a container needs for its probes and scrapes).
    metrics_host: str = Field(default="127.0.0.1", min_length=1, pattern=r"^[0-9A-Za-z.:_-]+$")
    #: Seconds of the first retry delay after a failed poll; doubles per failure, with jitter.
    backoff_initial: float = Field(default=1.0, gt=0)
    #: Seconds the retry delay never exceeds.
    backoff_max: float = Field(default=60.0, gt=0)
    #: Seconds an API request may take before it counts as failed.
    api_timeout: float = Field(default=30.0, gt=0)
    #: This poller's name among the site's pollers: the `cascade.instance` header of every record
    #: it publishes, the heartbeat's `instance` detail, its lease client id; default `<host>:<pid>`.
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:@-]{1,100}$")
    #: Seconds after which the broker gives an unresponsive active poller's lease to a standby
    #: (the lease group's session timeout; brokers refuse less than `group.min.session.timeout.ms`,
    #: 6 s by default).
    lease_timeout: float = Field(default=10.0, ge=1, le=300)
    #: Where a service lists no deleted objects and has no cheap count (Neutron accepting
    #: `changed_since`): a listing of ids every this many incremental polls finds deletions.
    deletion_sweep_every: int = Field(default=2, ge=1, le=1000)
    #: Share of a kind's known objects that may vanish from one listing; above it the
    #: tombstones wait until the next listing agrees (a Nova cell down hides its servers).
    vanish_guard: float = Field(default=0.2, gt=0, le=1.0)

    @field_validator("name")
    @classmethod
    def _valid_site_name(cls, value: str | None) -> str | None:
        problem = None if value is None else site_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("kinds", mode="before")
    @classmethod
    def _split_kinds(cls, value: Any) -> Any:
        # From the environment or --kinds: a comma-separated string.
        return [k for k in value.split(",") if k.strip()] if isinstance(value, str) else value

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        return resolve_kind_names(value)


class NotificationSettings(_Section):
    """The site's message bus, listened to as a hint to poll a kind early (docs/site.md)."""

    #: oslo.messaging transport URL of the site's bus (`rabbit://USER:PASS@HOST:PORT/`); unset:
    #: polling alone. Needs the `notifications` extra.
    url: str | None = Field(default=None, pattern=r"^[a-z0-9+]+://")
    #: Seconds from a kind's first notification to the poll it triggers; notifications until
    #: then ride on that poll.
    debounce: float = Field(default=0.2, ge=0, le=60)
    #: oslo.messaging listener pool (its own queue): default `cascade-connector-<site>`. Pollers
    #: of one site share a pool; other consumers (Ceilometer) keep their own messages.
    pool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    #: Share of a kind's objects changed per second, as a triggered poll lists them (objects
    #: over the span of their update times, plus a second), beyond which the kind is storming (a
    #: site restart changes most objects at once; steady churn a small share a second): its
    #: triggers pause for one interval, so a storm costs about what polling alone costs.
    storm_share: float = Field(default=0.3, gt=0, le=10)
    #: What reads the bus: `pika` (RabbitMQ's client, `rabbit://` URLs; far less CPU per
    #: notification, docs/performance.md) or `oslo.messaging` (its listener, for the
    #: `[oslo_messaging_rabbit]` options such as TLS files; `rabbit://` only so far). Both read
    #: the same pool's queue.
    listener: Literal["pika", "oslo.messaging"] = "pika"


class ConsumerSettings(_Section):
    """The top consumer group: its name, its batches, the rate the top layer allows."""

    #: Consumer group id; members of one group split the site topics' partitions.
    group: str = Field(default="cascade-top", min_length=1)
    #: Records per second at most (unset: no limit).
    max_rate: float | None = Field(default=None, gt=0)
    #: Batches (sink calls) per second at most (unset: no limit).
    max_batches_per_second: float | None = Field(default=None, gt=0)
    #: Changes per sink call at most (the rate limit may allow fewer), and records per poll.
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    #: Milliseconds a site's window stays open at least once it has a record: the freshness
    #: price when the top layer keeps up (under load windows widen by themselves: a site's next
    #: window closes only after the last is applied, and not before the rate could take it).
    batch_wait_ms: int = Field(default=250, ge=0, le=60_000)
    #: Milliseconds a site's window stays open at most while the site storms faster than the
    #: rate limit (the window closes sooner once the top layer could have taken what it holds).
    max_window_wait_ms: int = Field(default=30_000, ge=0, le=600_000)
    #: Keys waiting in memory over all sites (the memory a key takes: docs/consumer.md) before the
    #: partitions of the sites holding the most are paused until they drain.
    max_pending_keys: int = Field(default=200_000, ge=1, le=10_000_000)
    #: Share of each sink call per site, relative to the others (sites not listed: 1).
    site_weights: dict[str, float] = Field(default_factory=dict)
    #: Kinds applied first within a site's share, in this order; kinds not listed follow in
    #: the order read. Heartbeats always go first.
    kind_priority: list[str] = Field(default_factory=list)
    #: Where records that cannot be decoded or applied go, with headers saying why.
    dead_letter_topic: str = Field(default="cascade.deadletter", pattern=r"^[A-Za-z0-9._-]+$")
    #: Port for /metrics, /readyz, /livez; 0 picks a free one; unset: no server.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: Address the metrics server listens on: loopback unless set (`0.0.0.0` or `::` for every
    #: interface, as a container needs for its probes and scrapes).
    metrics_host: str = Field(default="127.0.0.1", min_length=1, pattern=r"^[0-9A-Za-z.:_-]+$")
    #: A site is `offline` (its objects read UNKNOWN) after this many of its heartbeat
    #: intervals without a heartbeat, by the top's clock: 3 lets one heartbeat be lost.
    offline_after_heartbeats: int = Field(default=3, ge=2, le=1000)
    #: A degraded or offline site is `online` again after this many good heartbeats in a row.
    online_after_heartbeats: int = Field(default=2, ge=1, le=1000)
    #: Seconds this member may hold no partition while the site topics have partitions no
    #: other member reads (a group client stuck without its assignment) before it rejoins the
    #: group with a new client; /readyz says so meanwhile.
    stall_after_seconds: float = Field(default=60.0, ge=1, le=3600)
    #: Seconds between periodic audits of the sites this member judges, exported as drift
    #: metrics (an SQL sink only; each audit reads the site's topic whole); unset: none.
    audit_interval_seconds: float | None = Field(default=None, ge=1, le=7 * 86400)

    @field_validator("site_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float]) -> dict[str, float]:
        for site, weight in value.items():
            if not weight > 0:
                raise ValueError(f"expected a weight > 0 for site {site!r}, got {weight!r}")
        return value

    @field_validator("kind_priority", mode="before")
    @classmethod
    def _split_kinds(cls, value: Any) -> Any:
        # From the environment: a comma-separated string.
        return (
            [k.strip() for k in value.split(",") if k.strip()] if isinstance(value, str) else value
        )


class Settings(_Section):
    """All settings, one section per part of the connector."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    site: SiteSettings = Field(default_factory=SiteSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)


ENV_PREFIX = "CASCADE_"


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Merge file, environment and flags (in that order of precedence) into validated Settings.

    `flags` maps section -> field -> value; a None value means "flag not given".
    """
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}

    if config_file is not None:
        for section, fields in _read_toml(config_file).items():
            if not isinstance(fields, dict):
                raise ConfigError(f"{config_file}: [{section}] must be a table, got {fields!r}")
            for name, value in fields.items():
                merged.setdefault(section, {})[name] = value
                origin[(section, name)] = str(config_file)

    for section, name, var in _env_fields():
        if env is not None and var in env:
            merged.setdefault(section, {})[name] = env[var]
            origin[(section, name)] = f"environment variable {var}"

    for section, fields in (flags or {}).items():
        for name, value in fields.items():
            if value is None:
                continue
            if isinstance(value, dict):
                base = merged.setdefault(section, {}).get(name) or {}
                value = {**base, **value}
            merged.setdefault(section, {})[name] = value
            origin[(section, name)] = f"--{name.replace('_', '-')}"

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from exc
    _check_apply_budget(settings, origin)
    return settings


#: librdkafka's default `max.poll.interval.ms`.
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000
#: Seconds of the poll interval kept free for what else a batch does (dead letters, commit).
POLL_MARGIN_SECONDS = 30.0


def _check_apply_budget(settings: Settings, origin: Mapping[tuple[str, str], str]) -> None:
    """The consumer does not poll while a sink call runs: the call's budget, plus a margin for the
    dead letters and the commit, must end before the group would evict this member."""
    raw = settings.kafka.librdkafka.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS)
    try:
        max_poll = float(raw) / 1000.0
    except ValueError:
        return  # librdkafka itself names the bad value when the client is made
    budget = settings.sink.apply_timeout
    if budget + POLL_MARGIN_SECONDS > max_poll:
        where = origin.get(("sink", "apply_timeout"))
        source = f" (from {where})" if where else ""
        raise ConfigError(
            f"invalid settings: sink.apply_timeout: {budget:g} s plus {POLL_MARGIN_SECONDS:g} s "
            f"must stay below kafka.librdkafka max.poll.interval.ms ({max_poll:g} s){source}"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason}") from exc


def _env_fields() -> list[tuple[str, str, str]]:
    """(section, field, variable) for every scalar setting."""
    out = []
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, field in model.model_fields.items():
            if (
                field.annotation is not None
                and getattr(field.annotation, "__origin__", None) is dict
            ):
                continue
            out.append((section, name, f"{ENV_PREFIX}{section}_{name}".upper()))
    return out


def _describe(exc: ValidationError, origin: Mapping[tuple[str, str], str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        where = origin.get((loc[0], loc[1])) if len(loc) >= 2 else None
        field = ".".join(loc)
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] in ("missing", "value_error") else f", got {err['input']!r}"
        source = f" (from {where})" if where else ""
        lines.append(f"{field}: {msg[0].lower()}{msg[1:]}{got}{source}")
    return redact_text("invalid settings: " + "; ".join(lines))
