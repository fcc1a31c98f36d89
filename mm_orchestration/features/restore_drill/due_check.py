"""restore_drill_due: a daily check that no restore drill lapses unnoticed.

It applies the drills' one rule (due.py) to `ops/backup_drills`, the table backup-verify
writes: it passes while the next drill is more than a week away, warns compliance from a
week before it is due, and fails (ERROR) once it is late. The alert goes out once per due
date and state, through `send_alert` (monitoring/check_alerts.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from mm_orchestration.features.restore_drill.due import DrillDue, drill_due
from mm_orchestration.monitoring.check_alerts import check_alert_sensor
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.scheduling import JOB_TAG, RUN_LOGS
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE

DUE_CHECK = "restore_drill_due"

backup_drills = dg.AssetSpec(
    key=["ops", "backup_drills"],
    group_name="compliance",
    kinds={"postgres"},
    description="The restore drills' evidence (`ops.backup_drills`): RTO, RPO, the checks "
    "made, and when the next drill is due. Written by backup-verify.",
)


def due_result(due: DrillDue) -> dg.AssetCheckResult:
    """The check's verdict on `due`, with what its alert says."""
    state = due.state
    when = due.due_at.date().isoformat() if due.due_at else "now"
    subject = {
        "ok": f"Restore drill: next due by {when}",
        "due_soon": f"Restore drill due by {when}: run backup-verify this week",
        "lapsed": f"Restore drill LAPSED (was due {when}): compliance sign-off is blocked",
    }[state]
    return dg.AssetCheckResult(
        check_name=DUE_CHECK,
        passed=state == "ok",
        severity=dg.AssetCheckSeverity.ERROR if state == "lapsed" else dg.AssetCheckSeverity.WARN,
        description=due.describe(),
        metadata={
            "state": state,
            "last_successful_drill": str(due.last_success) if due.last_success else "never",
            "next_drill_due": str(due.due_at) if due.due_at else "now",
            "alert_key": f"restore-drill:{state}:{when}",
            "alert_subject": subject,
        },
    )


@dg.asset_check(
    asset=backup_drills.key,
    name=DUE_CHECK,
    blocking=False,
    description="A restore drill succeeded within 35 days: warns a week before the next is "
    "due, fails once it is late.",
)
def restore_drill_due(portal_db: PortalDatabase) -> dg.AssetCheckResult:
    """Whether the next restore drill is far off, due this week, or late."""
    portal_db.require("ops.backup_drills")
    with portal_db.connection() as conn:
        due = drill_due(conn, datetime.now(UTC))
    return due_result(due)


restore_drill_due_job = dg.define_asset_job(
    "restore_drill_due_check",
    selection=dg.AssetSelection.checks(restore_drill_due),
    description="Whether a restore drill is due or late (alerts compliance).",
    tags={JOB_TAG: "restore-drill-due"},
    config=RUN_LOGS,
)

# Every morning, before the working day in Sydney.
restore_drill_due_schedule = dg.ScheduleDefinition(
    name="restore_drill_due_schedule",
    job=restore_drill_due_job,
    cron_schedule="0 8 * * *",
    execution_timezone=BUSINESS_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

restore_drill_due_alerts = check_alert_sensor(
    "restore_drill_due_alert_sensor",
    {DUE_CHECK: "compliance"},
    "Alerts compliance when a restore drill is due within a week or late (once per due date).",
)
