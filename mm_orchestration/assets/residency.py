"""residency_report: the weekly evidence of where each agency's data lives.

For every tenant and every place its data lives (portal database, video storage,
email delivery, error monitoring, backups) one row: system, vendor, data categories,
region, country, onshore, the evidence it was read from and when, and a status. A
tenant whose database or video region is outside the allowed set (Australian regions
by default) is an exception. The report is written as CSV and as an HTML page,
stored by the ReportStore with its SHA-256, recorded in `ops.residency_reports`,
emailed once to COMPLIANCE_EMAIL with both files attached, and linked from the
materialisation for download. Checks fail the week's sign-off when any tenant is an
exception, or when no restore drill succeeded in the last 35 days.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
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
    define_asset_job,
)
from psycopg.types.json import Jsonb

from mm_orchestration import inventory, spreadsheets
from mm_orchestration.outbox import Renderer, deliver_pending, enqueue
from mm_orchestration.resources import JobSettings, Mailer, PortalDatabase
from mm_orchestration.resources.mailer import Attachment, Email
from mm_orchestration.resources.report_store import ReportStore
from mm_orchestration.scheduling import (
    executor_for,
    job_tags,
    partitioned_schedule,
    retry_policy,
)
from mm_orchestration.settings import Settings

SPEC = inventory.get("residency-report")
WEEKS = WeeklyPartitionsDefinition(
    start_date="2025-01-06", day_offset=1, timezone="Australia/Sydney", end_offset=1
)
EMAIL_KIND = "residency_report"
EXCEPTIONS_CHECK = "no_residency_exceptions"
DRILL_CHECK = "restore_drill_within_35_days"
DRILL_MAX_AGE = timedelta(days=35)

ALLOWED_REGIONS = frozenset(
    {
        "ap-southeast-2",
        "ap-southeast-4",
        "aws-ap-southeast-2",
        "aws-ap-southeast-4",
        "australia-southeast1",
        "australia-southeast2",
        "australiaeast",
        "australiasoutheast",
        "au",
        "syd",
        "mel",
    }
)
COUNTRY_BY_PREFIX = (
    ("us-", "US"),
    ("aws-us-", "US"),
    ("eu-", "EU"),
    ("aws-eu-", "EU"),
    ("ap-southeast-1", "SG"),
    ("ap-northeast-1", "JP"),
    ("ap-south-1", "IN"),
    ("ca-", "CA"),
    ("sa-", "BR"),
    ("de", "DE"),
)


@dataclass(frozen=True)
class VendorRegion:
    """Where a vendor keeps the portal's data, and where that fact comes from."""

    system: str
    vendor: str
    data_categories: str
    region: str
    source: str


# The vendors' regions, with the named source each was taken from. Update them when
# a contract or an account setting changes; the report shows them as they are here.
VENDORS = (
    VendorRegion(
        "email delivery",
        "Twilio SendGrid",
        "recipient addresses and names, email content",
        "us",
        "SendGrid account: data residency setting (global, US)",
    ),
    VendorRegion(
        "error monitoring",
        "Sentry",
        "error traces, user ids, run ids",
        "us",
        "Sentry organisation settings: data storage location (US)",
    ),
    VendorRegion(
        "backups",
        "Neon",
        "portal database backups and history",
        "aws-ap-southeast-2",
        "Neon project settings: region AWS Asia Pacific (Sydney)",
    ),
)

# Every row of the report, built in the database: the million videos are aggregated to
# one row per tenant and region there, so Python only ever holds the report itself.
REPORT_ROWS = """
WITH regions AS (
    SELECT tenant_id, coalesce(storage_region, 'unknown') AS region, count(*) AS videos
      FROM portal.media_assets
     WHERE status <> 'deleted'
     GROUP BY 1, 2
), vendors AS (
    SELECT * FROM unnest(%(v_system)s::text[], %(v_vendor)s::text[], %(v_categories)s::text[],
                         %(v_region)s::text[], %(v_source)s::text[])
             WITH ORDINALITY AS v(system, vendor, categories, region, source, ord)
), places AS (
    SELECT t.id, t.name, 0 AS ord, 'portal database' AS system, 'Neon (PostgreSQL)' AS vendor,
           %(db_categories)s AS categories, t.data_region AS region,
           'portal.tenants.data_region' AS evidence, true AS judged
      FROM portal.tenants t
    UNION ALL
    SELECT t.id, t.name, 1, 'video storage', 'Mux', %(video_categories)s, r.region,
           'portal.media_assets.storage_region (' || r.videos || ' videos)', true
      FROM portal.tenants t JOIN regions r ON r.tenant_id = t.id
    UNION ALL
    SELECT t.id, t.name, 1 + v.ord, v.system, v.vendor, v.categories, v.region, v.source, false
      FROM portal.tenants t CROSS JOIN vendors v
)
SELECT id::text AS tenant_id, name AS tenant, system, vendor, categories AS data_categories,
       region, lower(region) = ANY(%(allowed)s) AS onshore, evidence, judged
  FROM places
 ORDER BY name, id, ord, region
"""

COLUMNS = [
    "tenant_id",
    "tenant",
    "system",
    "vendor",
    "data_categories",
    "region",
    "country",
    "onshore",
    "evidence",
    "read_at",
    "status",
]


def country(region: str) -> str:
    if region.lower() in ALLOWED_REGIONS:
        return "AU"
    for prefix, code in COUNTRY_BY_PREFIX:
        if region.lower().startswith(prefix):
            return code
    return "unknown"


def report_params() -> dict[str, Any]:
    return {
        "v_system": [v.system for v in VENDORS],
        "v_vendor": [v.vendor for v in VENDORS],
        "v_categories": [v.data_categories for v in VENDORS],
        "v_region": [v.region for v in VENDORS],
        "v_source": [v.source for v in VENDORS],
        "db_categories": "projects, tasks, users, share links, analytics events",
        "video_categories": "video files, titles, playback",
        "allowed": sorted(ALLOWED_REGIONS),
    }


def build_frame(conn: psycopg.Connection, read_at: datetime) -> pd.DataFrame:
    """The report as a table: one row per tenant and place its data lives."""
    cursor = conn.execute(REPORT_ROWS, report_params())
    frame = pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description or []])
    frame["country"] = frame["region"].map({r: country(r) for r in frame["region"].unique()})
    frame["read_at"] = read_at.isoformat(timespec="seconds")
    frame["status"] = "ok"
    frame.loc[frame["judged"] & ~frame["onshore"], "status"] = "exception"
    return frame[COLUMNS]


def render(frame: pd.DataFrame, week: date) -> tuple[bytes, bytes, list[str]]:
    """(CSV of every row, a readable HTML page, tenants with an exception)."""
    exceptions_rows = frame[frame["status"] == "exception"]
    exceptions = sorted(set(exceptions_rows["tenant"]))
    csv = spreadsheets.to_csv(frame)
    # The page people read: the exceptions in full, then one line per tenant.
    per_tenant = (
        frame[frame["system"].isin(["portal database", "video storage"])]
        .groupby(["tenant", "tenant_id"], sort=True)
        .agg(
            regions=("region", lambda r: ", ".join(sorted(set(r)))),
            status=("status", lambda s: "exception" if (s == "exception").any() else "ok"),
        )
        .reset_index()
        .drop(columns="tenant_id")
    )
    vendors = pd.DataFrame(
        [(v.system, v.vendor, v.region, country(v.region), v.source) for v in VENDORS],
        columns=["system", "vendor", "region", "country", "source"],
    )
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Data residency report, week of {week}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"<h1>Data residency report, week of {week}</h1>"
        f"<p>{len(per_tenant)} tenants, {len(frame)} rows (all of them in the CSV). "
        f"<strong>{len(exceptions)}</strong> tenant(s) with data outside the allowed regions."
        "</p><h2>Exceptions</h2>"
        + (
            exceptions_rows.drop(columns=["tenant_id"]).to_html(index=False, border=0)
            if exceptions
            else "<p>None.</p>"
        )
        + "<h2>Vendors</h2>"
        + vendors.to_html(index=False, border=0)
        + "<h2>Tenants</h2>"
        + per_tenant.to_html(index=False, border=0)
        + "</body></html>"
    ).encode()
    return csv, html, exceptions


def make_renderer(store: ReportStore) -> Renderer:
    def render_email(key: str, row: dict[str, Any]) -> Email:
        csv = store.get(row["csv_key"], row["csv_sha256"])
        html = store.get(row["html_key"], row["html_sha256"])
        verdict = (
            "compliant" if row["compliant"] else (f"NOT compliant: {', '.join(row['exceptions'])}")
        )
        return Email(
            key=key,
            recipient=row["recipient"],
            subject=f"Data residency report, week of {row['week']}: {verdict}",
            text=(
                f"The weekly data residency report for the week of {row['week']} is attached "
                f"as CSV and HTML ({row['rows']} rows; CSV SHA-256 {row['csv_sha256']}).\n\n"
                f"Result: {verdict}.\n\nIt stays downloadable from the residency_report asset "
                "in the job console.\n"
            ),
            attachments=(
                Attachment(f"residency-{row['week']}.csv", csv, "text/csv"),
                Attachment(f"residency-{row['week']}.html", html, "text/html"),
            ),
            categories=("residency-report",),
        )

    return render_email


def drill_check(conn: psycopg.Connection, as_of: datetime) -> AssetCheckResult:
    row = conn.execute(
        "SELECT max(finished_at) FROM ops.backup_drills WHERE status = 'succeeded'"
    ).fetchone()
    last = row[0] if row else None
    passed = last is not None and as_of - last <= DRILL_MAX_AGE
    return AssetCheckResult(
        check_name=DRILL_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=None
        if passed
        else (
            "no restore drill succeeded in the last 35 days"
            + (f" (last success {last:%Y-%m-%d})" if last else " (none recorded)")
            + ": run backup_verify; sign-off is blocked until one succeeds"
        ),
        metadata={"last_successful_drill": str(last) if last else "never"},
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
    csv_key = f"residency/{week}/residency-{week}.csv"
    html_key = f"residency/{week}/residency-{week}.html"
    csv_sha, html_sha = report_store.put(csv_key, csv), report_store.put(html_key, html)
    compliant = not exceptions
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
                csv_key,
                csv_sha,
                len(frame),
                compliant,
                html_key,
                html_sha,
                Jsonb(exceptions),
            ],
        )
        enqueue(
            conn,
            f"residency-report:{week}",
            EMAIL_KIND,
            job_settings.compliance_email,
            {
                "week": week.isoformat(),
                "csv_key": csv_key,
                "csv_sha256": csv_sha,
                "html_key": html_key,
                "html_sha256": html_sha,
                "rows": len(frame),
                "compliant": compliant,
                "exceptions": exceptions,
            },
        )
    report = deliver_pending(
        portal_db, mailer, [EMAIL_KIND], make_renderer(report_store), context.run_id
    )
    with portal_db.connection() as conn:
        conn.execute(
            """UPDATE ops.residency_reports r SET emailed_at = o.sent_at
                 FROM ops.notification_outbox o
                WHERE o.idempotency_key = 'residency-report:' || r.week_start
                  AND o.status = 'sent' AND r.week_start = %s""",
            [week],
        )
        drill = drill_check(conn, read_at)
    base = job_settings.reports_url.rstrip("/")
    flagged = frame.loc[frame["status"] == "exception", ["tenant", "system", "region"]]
    preview = "| tenant | system | region |\n|---|---|---|\n" + "".join(
        f"| {tenant} | {system} | {region} |\n"
        for tenant, system, region in flagged.itertuples(index=False)
    )
    return MaterializeResult(
        metadata={
            "week_start": week.isoformat(),
            "rows": len(frame),
            "compliant": compliant,
            "exceptions": len(exceptions),
            "download_csv": MetadataValue.url(f"{base}/reports/{csv_key}"),
            "download_html": MetadataValue.url(f"{base}/reports/{html_key}"),
            "csv_sha256": csv_sha,
            "exceptions_preview": MetadataValue.md(preview if exceptions else "No exceptions."),
            "emails_sent": report.sent,
        },
        check_results=[
            AssetCheckResult(
                check_name=EXCEPTIONS_CHECK,
                passed=compliant,
                severity=AssetCheckSeverity.ERROR,
                description=None
                if compliant
                else (f"data outside the allowed regions for: {', '.join(exceptions)}"),
                metadata={"tenants": ", ".join(exceptions) or "none"},
            ),
            drill,
        ],
    )


residency_report_job = define_asset_job(
    SPEC.dagster_name,
    selection=[residency_report],
    tags=job_tags(SPEC),
    executor_def=executor_for(SPEC),
    description="Generate the week's data residency report (residency-report).",
)


def residency_schedule(settings: Settings, job: Any = residency_report_job) -> ScheduleDefinition:
    """Monday 07:00 Sydney (hourly in staging): the week that is starting."""

    def this_week(tick: datetime) -> list[tuple[str, str]]:
        local = tick.astimezone(ZoneInfo(WEEKS.timezone)).date()
        return [((local - timedelta(days=local.weekday())).isoformat(), "report")]

    return partitioned_schedule(SPEC, job, settings, WEEKS.timezone, this_week)
