"""tenant_health_daily: each active agency's state at 06:00, for the account managers.

Per active tenant and day: milestones at risk (not completed and due within 72
hours, or overdue), overdue tasks, active share links, share link views, and a
status: red when any milestone is overdue, amber when any is at risk or more than
five tasks are overdue, green otherwise. The thresholds live in `THRESHOLDS`. A
day's rows are replaced in one transaction, so reruns never double. The day's
summary is emailed to ADMIN_EMAIL once (outbox key `tenant-health:<day>`); a failed
run notifies the Admin (the inventory's escalation target) through `job_failure_sensor`.
"""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from dagster import (
    AssetExecutionContext,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
)

from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox import conclude, deliver_pending, enqueue, finished_runs
from mm_orchestration.platform.outbox.mailer import Email, Mailer
from mm_orchestration.platform.scheduling import (
    inventory_asset_job,
    partitioned_schedule,
    retry_policy,
)
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE, Settings
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.text import markdown_table, one_line

SPEC = inventory.get("tenant-health-check")
# end_offset=1: the 06:00 tick computes the day that is starting, not yesterday.
DAYS = DailyPartitionsDefinition(start_date="2025-01-01", timezone=BUSINESS_TIMEZONE, end_offset=1)
SUMMARY_KIND = "tenant_health_summary"


@dataclass(frozen=True)
class HealthThresholds:
    """What makes a tenant amber or red. Change them here."""

    milestone_risk_hours: int = 72  # a milestone due within this many hours is at risk
    amber_overdue_tasks: int = 5  # more overdue tasks than this is amber


THRESHOLDS = HealthThresholds()

CLEAR_DAY = "DELETE FROM ops.tenant_health_daily WHERE day = %(day)s"

WRITE_DAY = query(__package__, "write_day")

SUMMARY = """
SELECT t.name, h.status, h.milestones_at_risk, h.overdue_tasks, h.active_share_links,
       h.share_link_views, h.overdue_milestones
  FROM ops.tenant_health_daily h JOIN portal.tenants t ON t.id = h.tenant_id
 WHERE h.day = %(day)s AND h.status <> 'green'
 ORDER BY h.status DESC, t.name
"""


def reference_time(day: date, tz: str = BUSINESS_TIMEZONE) -> datetime:
    return datetime.combine(day, time(6), ZoneInfo(tz))


def write_day(conn: psycopg.Connection, day: date, ref: datetime) -> int:
    """Replace one day's rows in the caller's transaction. Returns tenants written."""
    params = {
        "day": day,
        "ref": ref,
        "risk": timedelta(hours=THRESHOLDS.milestone_risk_hours),
        "amber_tasks": THRESHOLDS.amber_overdue_tasks,
    }
    conn.execute(CLEAR_DAY, params)
    return conn.execute(WRITE_DAY, params).rowcount


def reason(row: tuple[Any, ...]) -> str:
    _, status, at_risk, overdue_tasks, _, _, overdue_milestones = row
    reasons = []
    if overdue_milestones:
        reasons.append(f"{overdue_milestones} milestone(s) overdue")
    if at_risk and at_risk > overdue_milestones:
        reasons.append(
            f"{at_risk - overdue_milestones} milestone(s) due within "
            f"{THRESHOLDS.milestone_risk_hours} h"
        )
    if overdue_tasks > THRESHOLDS.amber_overdue_tasks:
        reasons.append(f"{overdue_tasks} tasks overdue")
    return "; ".join(reasons)


def summarise(
    conn: psycopg.Connection, day: date
) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """The day's counts by status, and (tenant, status, why) of each red or amber tenant."""
    counts: dict[str, int] = dict(
        conn.execute(
            "SELECT status, count(*) FROM ops.tenant_health_daily WHERE day = %s GROUP BY 1", [day]
        ).fetchall()
    )
    flagged = conn.execute(SUMMARY, {"day": day}).fetchall()
    rows = [(r[0], r[1], reason(r)) for r in flagged]
    return {s: int(counts.get(s, 0)) for s in ("green", "amber", "red")}, rows


def _flagged_text(row: dict[str, Any]) -> str:
    """The red and amber tenants as plain lines (summaries queued before carry a table)."""
    if "rows" not in row:
        return str(row["table"])
    return "".join(f"- {one_line(t)}: {status} ({why})\n" for t, status, why in row["rows"])


def render_summary(key: str, row: dict[str, Any]) -> Email:
    counts = row["counts"]
    return Email(
        key=key,
        recipient=row["recipient"],
        subject=(
            f"Tenant health {row['day']}: {counts['red']} red, {counts['amber']} amber, "
            f"{counts['green']} green"
        ),
        text=(
            f"Tenant health for {row['day']} (as of 06:00):\n\n"
            + (
                _flagged_text(row)
                if counts["red"] + counts["amber"]
                else "Every tenant is green.\n"
            )
            + "\nThe full table is on the tenant_health_daily asset in the job console.\n"
        ),
        categories=("tenant-health",),
    )


@asset(
    partitions_def=DAYS,
    key_prefix=["ops"],
    group_name="tenant_health",
    kinds={"postgres"},
    retry_policy=retry_policy(SPEC),
)
def tenant_health_daily(
    context: AssetExecutionContext,
    portal_db: PortalDatabase,
    mailer: Mailer,
    job_settings: JobSettings,
) -> MaterializeResult:
    """Each active tenant's health for the day (ops.tenant_health_daily), and the Admin's email."""
    portal_db.require(
        "portal.tenants",
        "portal.milestones",
        "portal.tasks",
        "portal.share_links",
        "ops.tenant_health_daily",
    )
    day = date.fromisoformat(context.partition_key)
    ref = reference_time(day)
    with portal_db.connection() as conn:
        written = write_day(conn, day, ref)
        counts, flagged = summarise(conn, day)
        enqueue(
            conn,
            f"tenant-health:{day}",
            SUMMARY_KIND,
            job_settings.admin_email,
            {"day": day.isoformat(), "counts": counts, "rows": flagged},
        )
    report = deliver_pending(
        portal_db, mailer, [SUMMARY_KIND], render_summary, context.run_id,
        finished_runs(context.instance), must_reach=True,
    )  # fmt: skip
    # A summary refused, lost or suppressed for good fails the materialisation, so the
    # Admin is alerted; one SendGrid cannot take now waits (listed as `waiting` by
    # `mm-jobs outbox list`) for the next materialisation or a rerun.
    conclude(
        portal_db, report, [SUMMARY_KIND], context.run_id, "summary email", tolerate_deferred=True
    )
    return MaterializeResult(
        metadata={
            "day": day.isoformat(),
            "tenants": written,
            "green": counts["green"],
            "amber": counts["amber"],
            "red": counts["red"],
            "red_and_amber": MetadataValue.md(markdown_table(["tenant", "status", "why"], flagged)),
            "summary_emails_sent": report.sent,
        }
    )


tenant_health_check = inventory_asset_job(
    SPEC, tenant_health_daily, "Compute the day's tenant health (tenant-health-check)."
)


def tenant_health_schedule(
    settings: Settings, job: Any = tenant_health_check
) -> ScheduleDefinition:
    """06:00 Sydney daily (hourly in staging): the day that is starting."""

    def today(tick: datetime) -> list[tuple[str, str]]:
        return [(tick.astimezone(ZoneInfo(DAYS.timezone)).date().isoformat(), "health")]

    return partitioned_schedule(SPEC, job, settings, DAYS.timezone, today)
