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
from connector.kafka.consumer import Consumer
from connector.kafka.producer import Producer
from connector.kafka.topics import ensure_dead_letter_topic, site_topic_pattern
from connector.ops.metrics import OpsServer
from connector.ops.signals import stop_on_signals
from connector.records.messages import change_from_message
from connector.sinks import Sink, open_sink
from connector.top.consumer import BatchPolicy, Decoder, TopConsumer
from connector.top.metrics import ConsumerMetrics
from connector.top.rate import RateLimiter

log = logging.getLogger(__name__)

#: /healthz fails when the loop has not polled for this long (the group would evict us too).
STALL_SECONDS = 60.0


def build_consumer(
    settings: Settings, sink: Sink, registry: CollectorRegistry, decode: Decoder | None = None
) -> TopConsumer:
    """A TopConsumer for `settings` applying to `sink`; ensures the dead-letter topic. `decode`
    replaces the codec's (tests put a registry outage in front of it)."""
    kafka, options = settings.kafka, settings.consumer
    pattern = site_topic_pattern(kafka.topic_prefix)
    if re.match(pattern, options.dead_letter_topic):
        raise ConfigError(
            f"consumer.dead_letter_topic: {options.dead_letter_topic!r} matches the site topic "
            f"pattern {pattern!r}; the consumer would read its own dead letters"
        )
    ensure_dead_letter_topic(kafka, options.dead_letter_topic)
    codec = codec_from_settings(kafka)
    return TopConsumer(
        consumer=Consumer(kafka, options.group),
        pattern=pattern,
        topic_prefix=kafka.topic_prefix,
        decode=decode or (lambda msg: change_from_message(msg, codec)),
        sink=sink,
        dead_letters=Producer(kafka),
        limiter=RateLimiter(options.max_rate, options.max_batches_per_second),
        policy=BatchPolicy(
            options.batch_size, options.batch_wait_ms / 1000.0, options.dead_letter_topic
        ),
        metrics=ConsumerMetrics(registry),
    )


def run_consumer(settings: Settings, until_idle: bool = False) -> None:
    """Consume every site topic into the configured sink until SIGTERM/SIGINT (or idle)."""
    registry = CollectorRegistry()
    with ExitStack() as cleanup:
        sink = open_sink(settings.sink)
        cleanup.callback(sink.close)
        loop = build_consumer(settings, sink, registry)
        if settings.consumer.metrics_port is not None:

            def health() -> tuple[bool, dict[str, Any]]:
                since = time.monotonic() - loop.last_poll
                return since < STALL_SECONDS, {"seconds_since_poll": round(since, 3)}

            server = OpsServer(registry, health, port=settings.consumer.metrics_port).start()
            cleanup.callback(server.stop)
            log.info("serving /metrics and /healthz on port %d", server.port)

        with stop_on_signals(loop.stop):
            loop.run(until_idle=until_idle)
