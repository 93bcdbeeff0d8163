"""Shared test data: example records of every kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from connector.records.model import HEARTBEAT_KIND, StatusRecord

NOW = datetime(2025, 11, 25, 12, 30, 15, 123456, tzinfo=UTC)


EXAMPLES = [
    StatusRecord(
        site="site-a",
        kind="server",
        id="8c1f7c6e-3b7a-4d6e-9a59-2f0c5d1e7a10",
        status="ACTIVE",
        sequence=1042,
        observed_at=NOW,
        name="web-01",
        project_id="4f1c2b7e9d8a4c6b8e2f1a0d3c5b7e9f",
        details={
            "vm_state": "active",
            "task_state": None,
            "power_state": 1,
            "host": "compute-07",
            "locked": False,
        },
        source_updated_at=NOW - timedelta(seconds=3),
    ),
    StatusRecord(
        site="site-a",
        kind="volume",
        id="0d3c5b7e-9f4f-1c2b-7e9d-8a4c6b8e2f1a",
        status="in-use",
        sequence=1043,
        observed_at=NOW,
        name="data",
        details={"attachments": ["8c1f7c6e-3b7a-4d6e-9a59-2f0c5d1e7a10"], "size": 100},
    ),
    StatusRecord(
        site="site-a",
        kind="port",
        id="e2f1a0d3-c5b7-e9f4-f1c2-b7e9d8a4c6b8",
        status="DOWN",
        sequence=1044,
        observed_at=NOW,
        details={
            "device_owner": "compute:nova",
            "binding:host_id": "compute-07",
            "admin_state_up": True,
            "fixed_ips": ["10.0.0.5"],
        },
        revision=17,
    ),
    StatusRecord(
        site="site-a",
        kind=HEARTBEAT_KIND,
        id="site-a",
        status="degraded",
        sequence=1045,
        observed_at=NOW,
        details={
            "server.last_good_poll": "2025-11-25T12:30:10+00:00",
            "server.error": None,
            "volume.last_good_poll": "2025-11-25T12:28:00+00:00",
            "volume.error": "HTTP 503 from block-storage",
            "lag_seconds": 0.25,
        },
    ),
]
