"""The sim's errors that reach its callers (the CLI, tests, the demo)."""

from __future__ import annotations

from connector.errors import ConnectorError


class SimError(ConnectorError):
    """A simulated site could not start or was asked for something impossible."""
