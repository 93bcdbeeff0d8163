"""The Confluent Schema Registry client the codec frames values through.

Owns confluent-kafka's SchemaRegistryClient and turns its many failure types into two answers:
a schema id the registry does not know (None), and a registry that did not do its part
(KafkaError). What the schema text means is the records layer's business.

confluent-kafka's registry client is imported only when a registry is used: it brings httpx,
authlib and joserfc, about 22 MB resident in every process that imports it, and a site's
poller (one per site, a hundred on a machine) uses no registry by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector.errors import KafkaError


class SchemaRegistry:
    """Registers Avro schemas under a subject and fetches schemas by id."""

    def __init__(self, url: str, client_config: Mapping[str, Any] | None = None) -> None:
        """`client_config`: more SchemaRegistryClient settings (TLS, auth, retries)."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url
        self._client = SchemaRegistryClient({**(client_config or {}), "url": url})

    def __repr__(self) -> str:
        return f"SchemaRegistry({self.url!r})"

    def register(self, subject: str, avro_schema: str) -> int:
        """The id of `avro_schema` (JSON text) under `subject`, registering it if new."""
        from confluent_kafka.schema_registry import Schema

        try:
            return int(self._client.register_schema(subject, Schema(avro_schema, "AVRO")))
        except Exception as exc:
            # Whatever the client raises (HTTP status, connection refused, timeout) means the
            # same here: the registry did not do its part.
            raise KafkaError(f"schema registry {self.url}: cannot register: {exc}") from exc

    def schema(self, schema_id: int) -> tuple[str | None, str | None] | None:
        """(schema type, schema text) registered under `schema_id`; None when there is none."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            found = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            # 40403 is "schema not found"; any other 404 is a wrong URL, not an unknown id.
            if exc.http_status_code == 404 and exc.error_code == 40403:
                return None
            raise KafkaError(f"schema registry {self.url}: {exc}") from exc
        except Exception as exc:
            # httpx and the client raise many types for a registry that cannot be reached.
            raise KafkaError(f"schema registry {self.url}: {exc!r}") from exc
        return found.schema_type, found.schema_str
