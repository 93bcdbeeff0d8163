"""Small admin requests of the development tools: is a broker up, drop a run's topics.

The local broker and the demo ask these of a bootstrap address alone, with no app settings.
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from connector.errors import KafkaError


def broker_answers(bootstrap: str, timeout: float) -> bool:
    """True when the broker at `bootstrap` answers a metadata request within `timeout` s."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        # Any failure (refused, timed out, not a broker) means the same here: not answering.
        return False
    return True


def delete_topics(bootstrap: str, prefix: str, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with `prefix`; returns their names. KafkaError when
    the broker refuses or does not answer."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=timeout).values():
                future.result()
    except KafkaException as exc:
        raise KafkaError(f"cannot delete the topics {prefix}*: {exc}") from exc
    return names
