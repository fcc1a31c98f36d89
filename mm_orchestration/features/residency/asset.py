"""residency_report: the weekly evidence of where each agency's data lives.

For every tenant and every place its data lives (portal database, its backups, video
storage, email delivery, error monitoring) one row: system, vendor, data categories,
region, country, onshore, the evidence it was read from and when, a status and the
reason for it. A tenant's backups live where its database lives (Neon keeps a
project's backups and history in the project's region), so that row follows the
tenant's database region. Every row's country comes from one region-to-country map;
a region the map does not know is reported as `unknown` and is an exception, whichever
system it belongs to. A tenant whose database, backups or videos are outside the
allowed set (Australian regions by default) is an exception; the email and monitoring
vendors outside it are disclosed, not judged. The report is written as CSV and as an
HTML page, stored by the ReportStore with its SHA-256, recorded in
`ops.residency_reports` under absolute URIs (`file:///...`, `s3://bucket/key`),
emailed once to COMPLIANCE_EMAIL with both files attached, and linked from the
materialisation for download. Checks fail the week's sign-off when any tenant is an
exception, or when no restore drill succeeded in the last 35 days.
"""

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    WeeklyPartitionsDefinition,
    asset,
)
from psycopg.types.json import Jsonb

from mm_orchestration.features.residency.legacy_uris import rewrite_legacy_uris
from mm_orchestration.features.residency.report import (
    build_frame,
    exceptions_preview,
    make_renderer,
    render,
)
from mm_orchestration.features.restore_drill.due import drill_due
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox import (
    conclude,
    deliver_pending,
    enqueue,
    finished_runs,
)
from mm_orchestration.platform.outbox.mailer import Mailer
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.scheduling import (
    inventory_asset_job,
    partitioned_schedule,
    retry_policy,
)
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE, Settings
from mm_orchestration.platform.text import markdown_cell

SPEC = inventory.get("residency-report")
WEEKS = WeeklyPartitionsDefinition(
    start_date="2025-01-06", day_offset=1, timezone=BUSINESS_TIMEZONE, end_offset=1
)
EMAIL_KIND = "residency_report"
EXCEPTIONS_CHECK = "no_residency_exceptions"
DRILL_CHECK = "restore_drill_within_35_days"


def drill_check(conn: psycopg.Connection, as_of: datetime) -> AssetCheckResult:
    """A restore drill succeeded within 35 days: the drills' own rule (restore_drill.due),
    the one the daily `restore_drill_due` check and each drill record read."""
    due = drill_due(conn, as_of)
    passed = due.state != "lapsed"
    return AssetCheckResult(
        check_name=DRILL_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=None if passed else due.describe(),
        metadata={
            "last_successful_drill": str(due.last_success) if due.last_success else "never",
            "next_drill_due": str(due.due_at) if due.due_at else "now",
        },
    )


@asset(
    partitions_def=WEEKS,
    key_prefix=["ops"],
    group_name="compliance",
    kinds={"postgres", "pandas"},
    retry_policy=retry_policy(SPEC),
    check_specs=[
        AssetCheckSpec(EXCEPTIONS_CHECK, asset=["ops", "residency_report"]),
        AssetCheckSpec(DRILL_CHECK, asset=["ops", "residency_report"]),
    ],
)
def residency_report(
    context: AssetExecutionContext,
    portal_db: PortalDatabase,
    mailer: Mailer,
    job_settings: JobSettings,
    report_store: ReportStore,
) -> MaterializeResult:
    """Where each tenant's data lives this week (CSV + HTML), for compliance sign-off."""
    portal_db.require(
        "portal.tenants", "portal.media_assets", "ops.residency_reports", "ops.backup_drills"
    )
    week = date.fromisoformat(context.partition_key)
    read_at = datetime.now(UTC)
    with portal_db.connection() as conn:
        frame = build_frame(conn, read_at)
    csv, html, exceptions = render(frame, week)
    exception_rows = int((frame["status"] == "exception").sum())
    csv_key = f"residency/{week}/residency-{week}.csv"
    html_key = f"residency/{week}/residency-{week}.html"
    csv_sha, html_sha = report_store.put(csv_key, csv), report_store.put(html_key, html)
    csv_uri, html_uri = report_store.uri(csv_key), report_store.uri(html_key)
    compliant = not exceptions
    with portal_db.connection() as conn:
        legacy = rewrite_legacy_uris(conn, report_store, context.run_id)
    for problem in legacy.unresolved:
        context.log.warning(
            f"ops.residency_reports {problem}: it stays a relative key. Put the file back "
            f"in the report store ({report_store.location}) under that key, or set the "
            "column to the file's URI by hand; the next run rewrites what it can prove."
        )
    payload = {
        "week": week.isoformat(),
        "csv_uri": csv_uri,
        "csv_sha256": csv_sha,
        "html_uri": html_uri,
        "html_sha256": html_sha,
        "rows": len(frame),
        "exception_rows": exception_rows,
        "compliant": compliant,
        "exceptions": exceptions,
    }
    with portal_db.connection() as conn:
        conn.execute(
            """INSERT INTO ops.residency_reports (week_start, generated_at, storage_uri, sha256,
                   row_count, compliant, html_uri, html_sha256, exceptions)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (week_start) DO UPDATE SET generated_at = excluded.generated_at,
                   storage_uri = excluded.storage_uri, sha256 = excluded.sha256,
                   row_count = excluded.row_count, compliant = excluded.compliant,
                   html_uri = excluded.html_uri, html_sha256 = excluded.html_sha256,
                   exceptions = excluded.exceptions""",
            [
                week,
                read_at,
                csv_uri,
                csv_sha,
                len(frame),
                compliant,
                html_uri,
                html_sha,
                Jsonb(exceptions),
            ],
        )
        email_key = f"residency-report:{week}"
        if not enqueue(conn, email_key, EMAIL_KIND, job_settings.compliance_email, payload):
            # Already queued. Sent: never again. Still waiting: it sends this run's files
            # (the earlier ones were just replaced, and their hashes with them).
            conn.execute(
                """UPDATE ops.notification_outbox SET payload = %s
                    WHERE idempotency_key = %s AND status = 'pending'""",
                [Jsonb(payload), email_key],
            )
    report = deliver_pending(
        portal_db,
        mailer,
        [EMAIL_KIND],
        make_renderer(report_store),
        context.run_id,
        finished_runs(context.instance),
        must_reach=True,
    )
    # The compliance email refused, lost or suppressed for good fails the materialisation
    # so compliance is alerted; one SendGrid cannot take now waits (listed as `waiting` by
    # `mm-jobs outbox list`) for a rerun of the week or the next materialisation.
    conclude(
        portal_db,
        report,
        [EMAIL_KIND],
        context.run_id,
        "residency report email",
        tolerate_deferred=True,
    )
    with portal_db.connection() as conn:
        emailed = conn.execute(
            """UPDATE ops.residency_reports r SET emailed_at = o.sent_at
                 FROM ops.notification_outbox o
                WHERE o.idempotency_key = 'residency-report:' || r.week_start
                  AND o.status = 'sent' AND r.week_start = %s
            RETURNING r.emailed_at""",
            [week],
        ).fetchone()
        drill = drill_check(conn, read_at)
    base = job_settings.reports_url.rstrip("/")
    return MaterializeResult(
        metadata={
            "week_start": week.isoformat(),
            "tenants": int(frame["tenant_id"].nunique()),
            "report_rows": len(frame),
            "exception_tenants": len(exceptions),
            "exception_rows": exception_rows,
            "residency_compliant": compliant,
            "exception_rows_preview": MetadataValue.md(exceptions_preview(frame)),
            "download_csv": MetadataValue.url(f"{base}/reports/{csv_key}"),
            "download_html": MetadataValue.url(f"{base}/reports/{html_key}"),
            "csv_uri": csv_uri,
            "html_uri": html_uri,
            "csv_sha256": csv_sha,
            "html_sha256": html_sha,
            "emailed_at": emailed[0].isoformat() if emailed else "not yet",
            "residency_emails_sent_this_run": report.sent,
            "legacy_rows_rewritten": legacy.rewritten,
            "legacy_rows_unresolved": len(legacy.unresolved),
        },
        check_results=[
            AssetCheckResult(
                check_name=EXCEPTIONS_CHECK,
                passed=compliant,
                severity=AssetCheckSeverity.ERROR,
                description=None
                if compliant
                else (
                    f"{len(exceptions)} tenant(s) with {exception_rows} exception row(s) "
                    "(data outside Australia, or in a region whose country is "
                    f"unknown): {markdown_cell(', '.join(exceptions), 2000)}"
                ),
                metadata={
                    "exception_tenants": ", ".join(exceptions) or "none",
                    "exception_tenant_count": len(exceptions),
                    "exception_rows": exception_rows,
                },
            ),
            drill,
        ],
    )


residency_report_job = inventory_asset_job(
    SPEC, residency_report, "Generate the week's data residency report (residency-report)."
)


def residency_schedule(settings: Settings, job: Any = residency_report_job) -> ScheduleDefinition:
    """Monday 07:00 Sydney (hourly in staging): the week that is starting."""

    def this_week(tick: datetime) -> list[tuple[str, str]]:
        local = tick.astimezone(ZoneInfo(WEEKS.timezone)).date()
        return [((local - timedelta(days=local.weekday())).isoformat(), "report")]

    return partitioned_schedule(SPEC, job, settings, WEEKS.timezone, this_week)
