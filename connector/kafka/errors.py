"""Kafka errors a person can act on: a wrong password, an untrusted certificate or a missing ACL
is named as such, with the user, topic or group concerned and the setting to check.

librdkafka retries authentication and TLS failures for ever and reports them only through its
error callback; `connected_admin` makes one metadata request first and turns the first such
report into a KafkaError, so a command with bad credentials fails in about a second. No message
here ever holds a secret: it names settings, never their values (except the CA file's path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient

from connector.errors import KafkaAccessError, KafkaError
from connector.kafka.client import new_client
from connector.kafka.settings import KafkaSettings

#: Seconds to reach the cluster and authenticate before that counts as Kafka trouble.
CONNECT_TIMEOUT = 30.0

_Code = confluent_kafka.KafkaError
#: Authorization error codes -> the kind of resource they are about.
AUTHORIZATION = {
    _Code.TOPIC_AUTHORIZATION_FAILED: "topic",
    _Code.GROUP_AUTHORIZATION_FAILED: "group",
    _Code.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    _Code.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}


def who(kafka: KafkaSettings) -> str:
    """The principal's name as messages give it."""
    return f"user {kafka.user}" if kafka.user else "this client (no SASL user)"


def access_problem(kafka: KafkaSettings, err: confluent_kafka.KafkaError) -> str | None:
    """A sentence naming an authentication or TLS failure, or None for any other error."""
    text = err.str()
    if err.code() == _Code._AUTHENTICATION or "SASL authentication error" in text:
        mechanism = kafka.sasl_mechanism or kafka.librdkafka.get("sasl.mechanism", "SASL")
        return (
            f"authentication failed for {who(kafka)} ({mechanism}) at {kafka.bootstrap}: the "
            "broker refused the credentials; check kafka.sasl_username and kafka.sasl_password"
        )
    if "certificate verify failed" in text:
        ca = kafka.ssl_ca_location or kafka.librdkafka.get("ssl.ca.location")
        trusted = f"the CA in {ca}" if ca else "the system's CA store (kafka.ssl_ca_location unset)"
        return (
            f"TLS: the broker's certificate at {kafka.bootstrap} is not signed by a trusted CA "
            f"(certificate verify failed against {trusted}); set kafka.ssl_ca_location to the "
            "CA certificate that signed the brokers' certificates"
        )
    if err.code() == _Code._SSL:
        return f"TLS handshake with {kafka.bootstrap} failed: {text}"
    return None


def not_authorized(
    kafka: KafkaSettings, action: str, err: confluent_kafka.KafkaError
) -> KafkaAccessError | None:
    """KafkaAccessError "<user> is not authorized to <action>" for an authorization error, else
    None."""
    kind = AUTHORIZATION.get(err.code())
    if kind is None:
        return None
    return KafkaAccessError(
        f"{who(kafka)} is not authorized to {action} ({kind} authorization failed); an "
        "administrator grants it with `cascade-connector acls ensure`"
    )


class ErrorRecorder:
    """librdkafka's `error_cb` that keeps the first authentication or TLS failure."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self.problem: str | None = None
        self.last: str | None = None

    def __call__(self, err: confluent_kafka.KafkaError) -> None:
        self.last = err.str()
        if self.problem is None:
            self.problem = access_problem(self._kafka, err)


def connected_admin(kafka: KafkaSettings, timeout: float = CONNECT_TIMEOUT) -> AdminClient:
    """An AdminClient that has answered a metadata request: KafkaError at once on a wrong
    password or an untrusted certificate, after `timeout` when no broker can be reached."""
    errors = ErrorRecorder(kafka)
    admin = new_client(AdminClient, kafka.client_config(error_cb=errors))
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return admin
        except confluent_kafka.KafkaException:
            pass
        admin.poll(0)  # serves the error callback
        if errors.problem:
            raise KafkaAccessError(errors.problem)
        if time.monotonic() >= deadline:
            raise KafkaError(
                f"cannot reach Kafka at {kafka.bootstrap} within {timeout:.0f} s"
                + (f": {errors.last}" if errors.last else "")
            )


def admin_result(
    kafka: KafkaSettings, what: str, call: Callable[[AdminClient], Any], timeout: float
) -> Any:
    """`call(admin)` on a connected AdminClient; its librdkafka errors become KafkaError
    naming `what`."""
    admin = connected_admin(kafka, timeout)
    try:
        return call(admin)
    except confluent_kafka.KafkaException as exc:
        err = exc.args[0]
        raise not_authorized(kafka, what, err) or KafkaError(f"cannot {what}: {err.str()}") from exc
    except TimeoutError as exc:
        raise KafkaError(f"cannot {what}: no answer within {timeout:.0f} s") from exc
