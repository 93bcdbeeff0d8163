"""Starting a throwaway local service for a fixture: the test FAILS (never skips) when the
service cannot start, and the service is removed after, whatever happened."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from connector.dev.local_service import LocalService
from connector.errors import ConnectorError

S = TypeVar("S", bound=LocalService)


@contextmanager
def running(service: S, what: str) -> Iterator[S]:
    """`service` started; `what` names it in the failure."""
    try:
        service.start()
    except ConnectorError as exc:
        pytest.fail(f"could not start {what}: {exc}")
    try:
        yield service
    finally:
        service.remove()
