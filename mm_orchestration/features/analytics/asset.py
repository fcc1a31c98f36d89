"""analytics_hourly: the portal's raw events rolled up per tenant, hour and event type.

Each UTC hour is a partition. Materialising one deletes that hour from
`ops.analytics_hourly` and inserts it again from `portal.events` in one transaction,
so rerunning or backfilling any hour gives the same rows and never doubles them;
an event that arrives late is picked up by materialising its hour again (the
schedule refreshes the previous hour once). The work reads only the hour's events
through the index on `occurred_at`, so its cost follows the hour, not the table.
A check reconciles the stored counts with the raw events after every run.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    HourlyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
)

from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.scheduling import (
    inventory_asset_job,
    partitioned_schedule,
    retry_policy,
)
from mm_orchestration.platform.settings import Settings
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.text import markdown_table

SPEC = inventory.get("analytics-rollup")
HOURS = HourlyPartitionsDefinition(start_date="2025-01-01-00:00", timezone="UTC")
CHECK = "reconciles_with_events"

CLEAR_HOUR = "DELETE FROM ops.analytics_hourly WHERE hour_start = %(start)s"

ROLL_UP_HOUR = query(__package__, "roll_up_hour")

RECONCILE = """
SELECT (SELECT coalesce(sum(event_count), 0) FROM ops.analytics_hourly
         WHERE hour_start = %(start)s),
       (SELECT count(*) FROM portal.events
         WHERE occurred_at >= %(start)s AND occurred_at < %(end)s)
"""


def hour_bounds(partition_key: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(partition_key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    return start, start + timedelta(hours=1)


def roll_up_hour(conn: psycopg.Connection, start: datetime) -> int:
    """Replace one hour's rows, in the caller's transaction. Returns rows written."""
    params = {"start": start, "end": start + timedelta(hours=1)}
    conn.execute(CLEAR_HOUR, params)
    return conn.execute(ROLL_UP_HOUR, params).rowcount


def reconcile(conn: psycopg.Connection, start: datetime) -> AssetCheckResult:
    """The stored counts for the hour must add up to the raw events in it."""
    row = conn.execute(RECONCILE, {"start": start, "end": start + timedelta(hours=1)}).fetchone()
    assert row is not None
    stored, raw = int(row[0]), int(row[1])
    return AssetCheckResult(
        check_name=CHECK,
        passed=stored == raw,
        severity=AssetCheckSeverity.ERROR,
        description=None
        if stored == raw
        else (
            f"hour {start:%Y-%m-%d %H:00} UTC: rollup counts {stored} events, portal.events "
            f"has {raw}; late events arrived: materialise this hour again"
        ),
        metadata={"stored_events": stored, "raw_events": raw},
    )


def _summary(conn: psycopg.Connection, start: datetime) -> dict[str, Any]:
    top = conn.execute(
        """SELECT event_type, sum(event_count)::bigint, count(DISTINCT tenant_id)
             FROM ops.analytics_hourly WHERE hour_start = %s
            GROUP BY event_type ORDER BY 2 DESC, 1 LIMIT 5""",
        [start],
    ).fetchall()
    totals = conn.execute(
        """SELECT coalesce(sum(event_count), 0)::bigint, count(DISTINCT tenant_id)
             FROM ops.analytics_hourly WHERE hour_start = %s""",
        [start],
    ).fetchone()
    assert totals is not None
    table = markdown_table(["event type", "events", "tenants"], top, numeric=(1, 2))
    return {"events": int(totals[0]), "tenants": int(totals[1]), "top": table}


@asset(
    partitions_def=HOURS,
    key_prefix=["ops"],
    group_name="analytics",
    kinds={"postgres"},
    retry_policy=retry_policy(SPEC),
    check_specs=[AssetCheckSpec(CHECK, asset=["ops", "analytics_hourly"])],
    pool="analytics_rollup",
)
def analytics_hourly(
    context: AssetExecutionContext, portal_db: PortalDatabase
) -> MaterializeResult:
    """Events per tenant, UTC hour and event type, with distinct users (ops.analytics_hourly)."""
    portal_db.require("portal.events", "ops.analytics_hourly")
    start, _ = hour_bounds(context.partition_key)
    with portal_db.connection() as conn:
        rows = roll_up_hour(conn, start)
        conn.commit()
        summary = _summary(conn, start)
        check = reconcile(conn, start)
    return MaterializeResult(
        metadata={
            "hour_start": start.isoformat(),
            "rows_written": rows,
            "events_counted": summary["events"],
            "tenants_seen": summary["tenants"],
            "top_event_types": MetadataValue.md(summary["top"]),
        },
        check_results=[check],
    )


analytics_rollup = inventory_asset_job(
    SPEC, analytics_hourly, "Roll up one UTC hour of portal events (analytics-rollup)."
)


def analytics_schedule(settings: Settings, job: Any = analytics_rollup) -> ScheduleDefinition:
    """Hourly: the hour that just ended, and once more the hour before it (late events)."""

    def last_two_hours(tick: datetime) -> list[tuple[str, str]]:
        latest = tick.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        latest -= timedelta(hours=1)
        return [
            (latest.strftime("%Y-%m-%d-%H:%M"), "rollup"),
            ((latest - timedelta(hours=1)).strftime("%Y-%m-%d-%H:%M"), "refresh"),
        ]

    return partitioned_schedule(SPEC, job, settings, settings.timezone, last_two_hours)
