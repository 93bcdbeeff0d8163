"""The SQL sink's availability schema: `site_availability` and the `resource_status_effective` view.

`site_availability` holds one row per site: its state as the top consumer judges it (`online`,
`degraded`, `offline`), since when, and the state before. `resource_status_effective` is what a
top-layer reader should query: every row of `resource_status`, except that an object of an
offline site reads status `UNKNOWN`, with its last known status in `last_known_status` and the
time its site went offline in `offline_since`. The base table keeps the last known status, so
nothing is lost and the site's return restores every status at once.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from connector.sinks.base import SiteAvailability

#: What an object of an offline site reads in the view (Nova's cells v2 says the same).
UNKNOWN = "UNKNOWN"
OFFLINE = "offline"
VIEW = "resource_status_effective"

availability_metadata = sa.MetaData()

site_availability = sa.Table(
    "site_availability",
    availability_metadata,
    sa.Column("site", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    #: when the site entered `state` (the top consumer's clock)
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("previous_state", sa.String(16)),
)

# The view names the columns of resource_status (connector/sinks/sql.py) one by one: a reader's
# query must not change meaning when the base table gains a column.
_VIEW_SELECT = f"""
SELECT rs.site, rs.kind, rs.id, rs.name, rs.project_id,
       CASE WHEN sa.state = '{OFFLINE}' THEN '{UNKNOWN}' ELSE rs.status END AS status,
       rs.status AS last_known_status,
       CASE WHEN sa.state = '{OFFLINE}' THEN sa.since END AS offline_since,
       COALESCE(sa.state, 'online') AS site_state,
       rs.details, rs.source_updated_at, rs.observed_at, rs.revision, rs.sequence,
       rs.deleted, rs.applied_at
FROM resource_status rs LEFT JOIN site_availability sa ON sa.site = rs.site
"""


def create_availability_schema(conn: sa.Connection) -> None:
    """Create the table and the view if missing (after resource_status exists)."""
    availability_metadata.create_all(conn)
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"CREATE OR REPLACE VIEW {VIEW} AS {_VIEW_SELECT}"))
    else:
        conn.execute(sa.text(f"CREATE VIEW IF NOT EXISTS {VIEW} AS {_VIEW_SELECT}"))


def availability_upsert(dialect: str) -> sa.Insert:
    """One statement writing a site's state (executed with many parameter sets)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    ins = insert(site_availability)
    return ins.on_conflict_do_update(
        index_elements=[site_availability.c.site],
        set_={c: ins.excluded[c] for c in ("state", "since", "previous_state")},
    )


def availability_rows(states: list[SiteAvailability]) -> list[dict[str, Any]]:
    return [
        {"site": s.site, "state": s.state, "since": s.since, "previous_state": s.previous}
        for s in states
    ]
