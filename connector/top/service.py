"""Wires settings into a running top consumer: sink, codec, dead-letter producer, metrics server,
signals. `cascade-connector consume` calls `run_consumer` and nothing else."""

from __future__ import annotations

import logging
import re
import time
from contextlib import ExitStack
from typing import Any

from prometheus_client import CollectorRegistry

from connector.codecs import codec_from_settings
from connector.config import Settings
from connector.errors import ConfigError
from connector.kafka.group_consumer import ClientFactory, Consumer
from connector.kafka.producer import Producer
from connector.kafka.topics import (
    ensure_dead_letter_topic,
    producer_limits,
    site_topic_pattern,
)
from connector.ops.heap import collect_less
from connector.ops.ops_server import HealthCheck, OpsServer
from connector.ops.signals import stop_on_signals
from connector.records.messages import change_from_message
from connector.sinks import Sink, open_sink, open_sql_sink
from connector.top.availability import Availability, AvailabilityMetrics, AvailabilityPolicy
from connector.top.closing import WindowPolicy
from connector.top.consumer_metrics import ConsumerMetrics
from connector.top.dead_letters import DeadLetterQueue
from connector.top.loop import Decoder, TopConsumer
from connector.top.offsets import ResumePolicy
from connector.top.periodic_audit import AuditMetrics, PeriodicAudit
from connector.top.rate import RateLimiter

log = logging.getLogger(__name__)

#: /readyz fails when the loop has not polled for this long.
STALL_SECONDS = 60.0
#: /livez fails when the loop has not polled for this long: librdkafka's default
#: max.poll.interval.ms, after which the group has evicted this member, so a restart loses nothing.
STUCK_SECONDS = 300.0


def build_consumer(
    settings: Settings,
    sink: Sink,
    registry: CollectorRegistry,
    decode: Decoder | None = None,
    availability: Availability | None = None,
    make_client: ClientFactory | None = None,
) -> TopConsumer:
    """A TopConsumer for `settings` applying to `sink`; ensures the dead-letter topic. `decode`
    replaces the codec's (tests put a registry outage in front of it); `availability` is
    the judge of the sites (`site_availability`), when something else asks it too;
    `make_client` makes the librdkafka clients (tests make one that never gets partitions)."""
    kafka, options = settings.kafka, settings.consumer
    pattern = site_topic_pattern(kafka.topic_prefix)
    if re.match(pattern, options.dead_letter_topic):
        raise ConfigError(
            f"consumer.dead_letter_topic: {options.dead_letter_topic!r} matches the site topic "
            f"pattern {pattern!r}; the consumer would read its own dead letters"
        )
    ensure_dead_letter_topic(kafka, options.dead_letter_topic)
    limits = producer_limits(kafka, options.dead_letter_topic)
    codec = codec_from_settings(kafka)
    metrics = ConsumerMetrics(registry)
    return TopConsumer(
        consumer=Consumer(kafka, options.group, make_client=make_client),
        pattern=pattern,
        topic_prefix=kafka.topic_prefix,
        decode=decode or (lambda msg, site: change_from_message(msg, codec, site)),
        sink=sink,
        dead_letters=DeadLetterQueue(
            Producer(kafka, None, **limits),
            options.dead_letter_topic,
            metrics,
            max_message=limits["message.max.bytes"],
        ),
        limiter=RateLimiter(options.max_rate, options.max_batches_per_second),
        policy=WindowPolicy(
            call_size=options.batch_size,
            wait=options.batch_wait_ms / 1000.0,
            max_wait=options.max_window_wait_ms / 1000.0,
            max_pending_keys=options.max_pending_keys,
            kind_priority=tuple(options.kind_priority),
            site_weights=options.site_weights,
        ),
        metrics=metrics,
        availability=availability or site_availability(settings, registry),
        resume=ResumePolicy(options.group, kafka.topic_prefix, kafka.delete_retention_ms / 1000.0),
        stall_after=options.stall_after_seconds,
    )


def site_availability(settings: Settings, registry: CollectorRegistry) -> Availability:
    """The judge of the sites' availability the consumer's settings ask for."""
    options = settings.consumer
    return Availability(
        AvailabilityPolicy(options.offline_after_heartbeats, options.online_after_heartbeats),
        AvailabilityMetrics(registry),
    )


def health_checks(loop: TopConsumer) -> tuple[HealthCheck, HealthCheck]:
    """/readyz and /livez of `loop`: ready while it polls and holds partitions (or is not
    stalled without them, see `watchdog.py`); live while it polls."""

    def polled_within(seconds: float) -> HealthCheck:
        def check() -> tuple[bool, dict[str, Any]]:
            since = time.monotonic() - loop.last_poll
            return since < seconds, {"seconds_since_poll": round(since, 3)}

        return check

    polled = polled_within(STALL_SECONDS)

    def ready() -> tuple[bool, dict[str, Any]]:
        healthy, details = polled()
        stalled = loop.stalled
        if stalled is None:
            return healthy, details
        return False, {**details, "assignment.stalled": stalled}

    return ready, polled_within(STUCK_SECONDS)


def run_consumer(settings: Settings, until_idle: bool = False) -> None:
    """Consume every site topic into the configured sink until SIGTERM/SIGINT (or idle)."""
    registry = CollectorRegistry()
    with ExitStack() as cleanup:
        cleanup.enter_context(collect_less())
        sink = open_sink(settings.sink)
        cleanup.callback(sink.close)
        availability = site_availability(settings, registry)
        loop = build_consumer(settings, sink, registry, availability=availability)
        interval = settings.consumer.audit_interval_seconds
        if interval is not None:
            audit_sink = open_sql_sink(settings.sink)
            cleanup.callback(audit_sink.close)
            audits = PeriodicAudit(
                settings, availability.sites, AuditMetrics(registry), interval, audit_sink
            )
            cleanup.callback(audits.stop)
            audits.start()
            log.info("auditing the sites this member judges every %g s", interval)
        if settings.consumer.metrics_port is not None:
            ready, live = health_checks(loop)
            server = OpsServer(
                registry,
                ready,
                host=settings.consumer.metrics_host,
                port=settings.consumer.metrics_port,
                live=live,
            ).start()
            cleanup.callback(server.stop)
            log.info(
                "serving /metrics, /readyz and /livez on port %d (%s)", server.port, server.host
            )

        def stop() -> None:
            loop.stop()
            sink.interrupt()  # a sink call in its retry backoff gives up (backpressure) at once

        with stop_on_signals(stop):
            loop.run(until_idle=until_idle)
