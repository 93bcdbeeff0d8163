"""Shared fixtures: the real Kafka broker (session-scoped), a throwaway RabbitMQ (session-scoped:
one node for the notification tests and the live dashboard test) and per-test unique names.

The broker is the one named by CASCADE_KAFKA_BOOTSTRAP, or a local one started through
`LocalKafka` (the code behind `cascade-connector local-kafka start`), stopped when the session
ends if the session started it. A broker that cannot be
reached or started fails the tests that need it; it never skips them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from connector.dev.local_kafka import LocalKafka
from connector.dev.local_rabbit import LocalRabbit
from connector.errors import LocalKafkaError
from connector.kafka.admin import broker_answers
from tests.support.services import running


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    bootstrap = os.environ.get("CASCADE_KAFKA_BOOTSTRAP")
    if bootstrap:
        if not broker_answers(bootstrap, timeout=10.0):
            pytest.fail(f"CASCADE_KAFKA_BOOTSTRAP={bootstrap} does not answer a metadata request")
        yield bootstrap
        return
    local = LocalKafka()
    started_here = not local.status().running
    try:
        yield local.start(echo=False)
    except LocalKafkaError as exc:
        pytest.fail(f"could not start the local Kafka broker: {exc}")
    finally:
        if started_here:
            local.stop()  # by its pid, also when tests failed


@pytest.fixture(scope="session")
def rabbit() -> Iterator[LocalRabbit]:
    """A running RabbitMQ node (Debian's, `make rabbitmq`), made on the first test that asks for
    it (a start and removal cost about 12 s). A test may stop it but must start it again."""
    with running(LocalRabbit(), "a throwaway RabbitMQ") as node:
        yield node


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """`unique_name("topic")` -> a name no other test (or earlier run) uses."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60]
    run = uuid.uuid4().hex[:8]
    return lambda what: f"test.{test}.{what}.{run}"
