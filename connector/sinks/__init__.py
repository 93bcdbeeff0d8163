"""Where the top consumer applies changes: one small interface, SQL and HTTP implementations.

`open_sink` picks the implementation from the URL's scheme; the consumer only sees `Sink`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from connector.config import SinkSettings
from connector.errors import ConfigError
from connector.sinks.base import ApplyResult, Sink, SinkBackpressureError, SinkError

if TYPE_CHECKING:
    from connector.sinks.sql import SqlSink

__all__ = [
    "ApplyResult",
    "Sink",
    "SinkBackpressureError",
    "SinkError",
    "open_sink",
    "open_sql_sink",
]


def open_sink(settings: SinkSettings | str) -> Sink:
    """The sink for `settings.url` (or a bare URL, with default settings otherwise):
    `sqlite:///PATH` and `postgresql://...` give an SqlSink, `http(s)://...` an HttpSink.

    Raises ConfigError for a URL of no known scheme, SinkError when the URL is unusable or the
    SQL tables cannot be created.
    """
    if isinstance(settings, str):
        try:
            settings = SinkSettings(url=settings)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"sink URL: {reason}") from exc
    scheme = settings.url.partition(":")[0].lower()
    # Imported here so that a process using one kind of sink does not load the other's library.
    if scheme in ("http", "https"):
        from connector.sinks.http import HttpSink

        return HttpSink(
            settings.url,
            timeout=settings.timeout,
            retries=settings.retries,
            retry_after=settings.retry_after,
            apply_timeout=settings.apply_timeout,
        )
    return open_sql_sink(settings)


def open_sql_sink(settings: SinkSettings) -> SqlSink:
    """The SqlSink for `settings.url`, for what reads the top layer's rows (the audit); a
    ConfigError for an HTTP sink, whose rows are the service's."""
    if settings.url.partition(":")[0].lower() in ("http", "https"):
        raise ConfigError(
            "sink.url: the audit reads an SQL sink; an HTTP sink's rows are the service's"
        )
    from connector.sinks.sql import SqlSink

    return SqlSink(
        settings.url,
        on_delete=settings.on_delete,
        retry_after=settings.retry_after,
        apply_timeout=settings.apply_timeout,
        statement_timeout=settings.statement_timeout,
        lock_timeout=settings.lock_timeout,
    )
