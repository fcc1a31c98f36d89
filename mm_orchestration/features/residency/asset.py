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

from dataclasses import dataclass, field
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
from psycopg import sql
from psycopg.types.json import Jsonb

from mm_orchestration.platform import audit, inventory, spreadsheets
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox import (
    Renderer,
    conclude,
    deliver_pending,
    enqueue,
    finished_runs,
)
from mm_orchestration.platform.outbox.mailer import Attachment, Email, Mailer
from mm_orchestration.platform.report_store import ReportStore, ReportStoreError, is_uri
from mm_orchestration.platform.scheduling import (
    executor_for,
    job_tags,
    partitioned_schedule,
    retry_policy,
)
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE, Settings
from mm_orchestration.platform.text import markdown_cell, markdown_table

SPEC = inventory.get("residency-report")
WEEKS = WeeklyPartitionsDefinition(
    start_date="2025-01-06", day_offset=1, timezone=BUSINESS_TIMEZONE, end_offset=1
)
EMAIL_KIND = "residency_report"
EXCEPTIONS_CHECK = "no_residency_exceptions"
DRILL_CHECK = "restore_drill_within_35_days"
DRILL_MAX_AGE = timedelta(days=35)

# The residency rule: a tenant's data (database, backups, videos) stays in Australia.
# Whether a region is onshore follows from its country in REGION_COUNTRY, so a region
# is never known to be Australian in one place and missing from a list in another.
HOME_COUNTRY = "AU"
UNKNOWN = "unknown"

# Where each cloud region is, by the names the portal's vendors use: ISO 3166 country
# codes ("EU" where a vendor names only the European Union). One map for every row of
# the report; a region missing here is reported as unknown and is an exception, so add
# it here (with its country) when a vendor or a tenant starts using it.
_AWS = {
    "us-east-1": "US",
    "us-east-2": "US",
    "us-west-1": "US",
    "us-west-2": "US",
    "us-gov-east-1": "US",
    "us-gov-west-1": "US",
    "ca-central-1": "CA",
    "ca-west-1": "CA",
    "mx-central-1": "MX",
    "sa-east-1": "BR",
    "af-south-1": "ZA",
    "eu-central-1": "DE",
    "eu-central-2": "CH",
    "eu-west-1": "IE",
    "eu-west-2": "GB",
    "eu-west-3": "FR",
    "eu-south-1": "IT",
    "eu-south-2": "ES",
    "eu-north-1": "SE",
    "il-central-1": "IL",
    "me-south-1": "BH",
    "me-central-1": "AE",
    "ap-east-1": "HK",
    "ap-east-2": "TW",
    "ap-south-1": "IN",
    "ap-south-2": "IN",
    "ap-southeast-1": "SG",
    "ap-southeast-2": "AU",
    "ap-southeast-3": "ID",
    "ap-southeast-4": "AU",
    "ap-southeast-5": "MY",
    "ap-southeast-6": "NZ",
    "ap-southeast-7": "TH",
    "ap-northeast-1": "JP",
    "ap-northeast-2": "KR",
    "ap-northeast-3": "JP",
    "cn-north-1": "CN",
    "cn-northwest-1": "CN",
}
_AZURE = {
    "australiaeast": "AU",
    "australiasoutheast": "AU",
    "australiacentral": "AU",
    "australiacentral2": "AU",
    "eastus": "US",
    "eastus2": "US",
    "westus": "US",
    "westus2": "US",
    "westus3": "US",
    "centralus": "US",
    "northcentralus": "US",
    "southcentralus": "US",
    "canadacentral": "CA",
    "northeurope": "IE",
    "westeurope": "NL",
    "uksouth": "GB",
    "germanywestcentral": "DE",
    "gwc": "DE",  # Neon's short name for Germany West Central
    "southeastasia": "SG",
    "japaneast": "JP",
}
_GCP = {
    "australia-southeast1": "AU",
    "australia-southeast2": "AU",
    "us-central1": "US",
    "us-east1": "US",
    "us-east4": "US",
    "us-east5": "US",
    "us-south1": "US",
    "us-west1": "US",
    "us-west2": "US",
    "us-west3": "US",
    "us-west4": "US",
    "northamerica-northeast1": "CA",
    "northamerica-northeast2": "CA",
    "southamerica-east1": "BR",
    "europe-west1": "BE",
    "europe-west2": "GB",
    "europe-west3": "DE",
    "europe-west4": "NL",
    "europe-west6": "CH",
    "europe-north1": "FI",
    "asia-southeast1": "SG",
    "asia-northeast1": "JP",
    "asia-east1": "TW",
    "asia-south1": "IN",
}
_ORACLE = {
    "ap-sydney-1": "AU",
    "ap-melbourne-1": "AU",
    "ap-singapore-1": "SG",
    "ap-tokyo-1": "JP",
    "us-ashburn-1": "US",
    "us-phoenix-1": "US",
    "uk-london-1": "GB",
    "eu-frankfurt-1": "DE",
}
_DIGITALOCEAN = {
    "syd1": "AU",
    "sgp1": "SG",
    "nyc1": "US",
    "nyc3": "US",
    "sfo3": "US",
    "lon1": "GB",
    "fra1": "DE",
    "ams3": "NL",
    "tor1": "CA",
    "blr1": "IN",
}
REGION_COUNTRY: dict[str, str] = {
    **_AWS,
    **{f"aws-{region}": code for region, code in _AWS.items()},  # Neon's AWS regions
    **_AZURE,
    **{f"azure-{region}": code for region, code in _AZURE.items()},  # Neon's Azure regions
    **_GCP,
    **{f"gcp-{region}": code for region, code in _GCP.items()},
    **_ORACLE,
    **_DIGITALOCEAN,
    # Vendors' own names for where an account's data is kept (SendGrid, Sentry, Mux...).
    "us": "US",
    "eu": "EU",
    "de": "DE",
    "au": "AU",
    "syd": "AU",
    "mel": "AU",
}

# Why a row has its status: one reason per row, in the CSV beside the status.
REASON_ALLOWED = "in Australia"
REASON_OFFSHORE = "tenant data outside Australia"
REASON_UNKNOWN = "region not in the region-to-country map: where this data is is not known"
REASON_VENDOR = (
    "vendor outside Australia, disclosed: the residency rule judges the "
    "database, its backups and videos"
)
PREVIEW_LIMIT = 50


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
)

# Every row of the report, built in the database: the million videos are aggregated to
# one row per tenant and region there, so Python only ever holds the report itself. A
# tenant's backups are where its database is: Neon keeps a project's backups and
# history (point-in-time restore) in the project's own region.
REPORT_ROWS = """
WITH regions AS (
    SELECT tenant_id,
           coalesce(nullif(btrim(storage_region, %(spaces)s), ''), 'unknown') AS region,
           count(*) AS videos
      FROM portal.media_assets
     WHERE status <> 'deleted'
     GROUP BY 1, 2
), vendors AS (
    SELECT * FROM unnest(%(v_system)s::text[], %(v_vendor)s::text[], %(v_categories)s::text[],
                         %(v_region)s::text[], %(v_source)s::text[])
             WITH ORDINALITY AS v(system, vendor, categories, region, source, ord)
), places AS (
    SELECT t.id, t.name, 0 AS ord, 'portal database' AS system, 'Neon (PostgreSQL)' AS vendor,
           %(db_categories)s AS categories,
           coalesce(nullif(btrim(t.data_region, %(spaces)s), ''), 'unknown') AS region,
           'portal.tenants.data_region' AS evidence, true AS judged
      FROM portal.tenants t
    UNION ALL
    SELECT t.id, t.name, 1, 'backups', 'Neon', %(backup_categories)s,
           coalesce(nullif(btrim(t.data_region, %(spaces)s), ''), 'unknown'),
           %(backup_evidence)s, true
      FROM portal.tenants t
    UNION ALL
    SELECT t.id, t.name, 2, 'video storage', 'Mux', %(video_categories)s, r.region,
           'portal.media_assets.storage_region (' || r.videos || ' videos)', true
      FROM portal.tenants t JOIN regions r ON r.tenant_id = t.id
    UNION ALL
    SELECT t.id, t.name, 2 + v.ord, v.system, v.vendor, v.categories, v.region, v.source, false
      FROM portal.tenants t CROSS JOIN vendors v
)
SELECT id::text AS tenant_id, name AS tenant, system, vendor, categories AS data_categories,
       region, evidence, judged
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
    "status_reason",
]


# What Python's str.strip() removes, so the SQL that groups regions and the Python that
# looks them up trim a region alike (a trailing no-break space included).
SPACES = "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def country(region: str) -> str:
    """The ISO country code of `region` from REGION_COUNTRY, or `unknown`."""
    return REGION_COUNTRY.get(region.strip().lower(), UNKNOWN)


def report_params() -> dict[str, Any]:
    return {
        "v_system": [v.system for v in VENDORS],
        "v_vendor": [v.vendor for v in VENDORS],
        "v_categories": [v.data_categories for v in VENDORS],
        "v_region": [v.region for v in VENDORS],
        "v_source": [v.source for v in VENDORS],
        "db_categories": "projects, tasks, users, share links, analytics events",
        "video_categories": "video files, titles, playback",
        "backup_categories": "portal database backups and history (point-in-time restore)",
        "backup_evidence": (
            "portal.tenants.data_region (Neon keeps a project's backups and history "
            "in the project's region)"
        ),
        "spaces": SPACES,
    }


def build_frame(conn: psycopg.Connection, read_at: datetime) -> pd.DataFrame:
    """The report as a table: one row per tenant and place its data lives."""
    cursor = conn.execute(REPORT_ROWS, report_params())
    frame = pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description or []])
    frame["country"] = frame["region"].map({r: country(r) for r in frame["region"].unique()})
    frame["read_at"] = read_at.isoformat(timespec="seconds")
    judged = frame["judged"].astype(bool)
    onshore = frame["country"] == HOME_COUNTRY
    frame["onshore"] = onshore
    unknown = frame["country"] == UNKNOWN
    offshore = judged & ~onshore
    frame["status"] = "ok"
    frame.loc[offshore | unknown, "status"] = "exception"
    frame["status_reason"] = REASON_VENDOR
    frame.loc[onshore, "status_reason"] = REASON_ALLOWED
    frame.loc[offshore, "status_reason"] = REASON_OFFSHORE
    frame.loc[unknown, "status_reason"] = REASON_UNKNOWN
    return frame[COLUMNS]


def exception_tenants(frame: pd.DataFrame) -> list[str]:
    """The tenants with at least one exception row, one entry per tenant (by id), sorted;
    a name that two tenants share carries the tenant's id, so none is counted twice."""
    shared = set(frame.drop_duplicates("tenant_id")["tenant"].loc[lambda n: n.duplicated()])
    rows = frame.loc[frame["status"] == "exception", ["tenant_id", "tenant"]]
    return sorted(
        f"{name} ({tenant_id})" if name in shared else name
        for tenant_id, name in rows.drop_duplicates("tenant_id").itertuples(index=False)
    )


def exceptions_preview(frame: pd.DataFrame) -> str:
    """The exception rows as a Markdown table, headed by what it counts."""
    rows = frame.loc[frame["status"] == "exception"]
    if rows.empty:
        return "No exception rows (0 tenants)."
    shown = rows.head(PREVIEW_LIMIT)
    head = (
        f"**{len(rows)} exception row(s) across {rows['tenant_id'].nunique()} tenant(s)**"
        + (
            f" (the first {len(shown)} rows below; every row is in the CSV)"
            if len(shown) < len(rows)
            else " (every exception row below)"
        )
        + "\n\n"
    )
    columns = ["tenant", "system", "region", "country", "status_reason"]
    return head + markdown_table(
        ["tenant", "system", "region", "country", "reason"],
        shown[columns].itertuples(index=False),
    )


def render(frame: pd.DataFrame, week: date) -> tuple[bytes, bytes, list[str]]:
    """(CSV of every row, a readable HTML page, tenants with an exception)."""
    exceptions = exception_tenants(frame)
    exception_rows = frame[frame["status"] == "exception"]
    csv = spreadsheets.to_csv(frame)
    # The page people read: the exceptions in full, the vendors, then one line per tenant.
    is_exception = (frame["status"] == "exception").groupby(frame["tenant_id"]).sum()
    database = frame[frame["system"] == "portal database"].set_index("tenant_id")["region"]
    videos = (
        frame[frame["system"] == "video storage"]
        .groupby("tenant_id")["region"]
        .agg(lambda r: ", ".join(sorted(set(r))))
    )
    tenants = frame.drop_duplicates("tenant_id")[["tenant_id", "tenant"]]
    per_tenant = tenants.assign(
        database_and_backups_region=tenants["tenant_id"].map(database),
        video_regions=tenants["tenant_id"].map(videos).fillna("no videos"),
        exception_rows=tenants["tenant_id"].map(is_exception).astype(int),
    )
    per_tenant["status"] = per_tenant["exception_rows"].map(lambda n: "exception" if n else "ok")
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
        f"<p>{len(tenants)} tenants, {len(frame)} rows (all of them in the CSV). "
        f"<strong>{len(exceptions)}</strong> tenant(s) with "
        f"<strong>{len(exception_rows)}</strong> exception row(s): tenant data outside "
        "Australia, or in a region whose country is unknown.</p>"
        f"<h2>Exceptions ({len(exception_rows)} row(s), {len(exceptions)} tenant(s))</h2>"
        + (
            exception_rows.drop(columns=["tenant_id"]).to_html(index=False, border=0)
            if len(exception_rows)
            else "<p>None.</p>"
        )
        + "<h2>Vendors (the same for every tenant)</h2>"
        + vendors.to_html(index=False, border=0)
        + f"<h2>Tenants ({len(tenants)})</h2>"
        + per_tenant.drop(columns="tenant_id").to_html(index=False, border=0)
        + "</body></html>"
    ).encode()
    return csv, html, exceptions


def make_renderer(store: ReportStore) -> Renderer:
    def read(row: dict[str, Any], kind: str) -> tuple[str, bytes]:
        sha = row[f"{kind}_sha256"]
        if row.get(f"{kind}_uri"):
            return row[f"{kind}_uri"], store.get_uri(row[f"{kind}_uri"], sha)
        # Queued before the rows held URIs: a key in this store, proven by its hash.
        key = row[f"{kind}_key"]
        return store.uri(key), store.get(key, sha)

    def render_email(key: str, row: dict[str, Any]) -> Email:
        csv_uri, csv = read(row, "csv")
        html_uri, html = read(row, "html")
        names = row["exceptions"]
        verdict = "compliant" if row["compliant"] else f"NOT compliant: {', '.join(names)}"
        # Tenant names stay out of the subject line: a tenant named like a verdict could
        # make an inbox read "compliant"; the count cannot.
        headline = (
            "compliant"
            if row["compliant"]
            else f"NOT compliant ({len(names)} tenant(s) with exceptions)"
        )
        counts = f"{row['rows']} rows"
        if "exception_rows" in row:
            counts += (
                f", {row['exception_rows']} exception row(s) across "
                f"{len(row['exceptions'])} tenant(s)"
            )
        return Email(
            key=key,
            recipient=row["recipient"],
            subject=f"Data residency report, week of {row['week']}: {headline}",
            text=(
                f"The weekly data residency report for the week of {row['week']} is attached "
                f"as CSV and HTML ({counts}; CSV SHA-256 {row['csv_sha256']}).\n\n"
                f"Result: {verdict}.\n\nStored as {csv_uri}\nand {html_uri}; "
                "downloadable from the residency_report asset in the job console.\n"
            ),
            attachments=(
                Attachment(f"residency-{row['week']}.csv", csv, "text/csv"),
                Attachment(f"residency-{row['week']}.html", html, "text/html"),
            ),
            categories=("residency-report",),
        )

    return render_email


# Rows written before migration 0006 hold a key relative to the store that wrote them,
# not a URI. The migration cannot know that store, so the asset, which has it, rewrites
# each such column when it next runs: only when the file at that key in its store still
# has the recorded SHA-256 (proof it is the very report), with an audit_log entry per
# change. A key whose file is not there (the store moved) stays as it is and is named.
LEGACY_ROWS = """
SELECT week_start, storage_uri, sha256, html_uri, html_sha256
  FROM ops.residency_reports
 WHERE storage_uri !~ '^[a-z][a-z0-9+.-]*://' OR html_uri !~ '^[a-z][a-z0-9+.-]*://'
 ORDER BY week_start
"""


@dataclass
class LegacyRows:
    rewritten: int = 0
    unresolved: list[str] = field(default_factory=list)


def rewrite_legacy_uris(conn: psycopg.Connection, store: ReportStore, run_id: str) -> LegacyRows:
    """Turn relative keys left in `ops.residency_reports` into this store's URIs."""
    found = LegacyRows()
    for week, csv_ref, csv_sha, html_ref, html_sha in conn.execute(LEGACY_ROWS).fetchall():
        for column, ref, sha in (
            ("storage_uri", csv_ref, csv_sha),
            ("html_uri", html_ref, html_sha),
        ):
            if ref is None or is_uri(ref):
                continue
            try:
                if not sha:
                    raise ReportStoreError(f"{ref!r} has no recorded SHA-256 to prove it")
                store.get(ref, sha)
            except ReportStoreError as exc:
                found.unresolved.append(f"{week} {column}: {exc}")
                continue
            uri = store.uri(ref)
            conn.execute(
                sql.SQL(
                    "UPDATE ops.residency_reports SET {col} = %s"
                    " WHERE week_start = %s AND {col} = %s"
                ).format(col=sql.Identifier(column)),
                [uri, week, ref],
            )
            audit.record(
                conn,
                "residency_report",
                "residency_report_uri_rewritten",
                SPEC.dagster_name,
                run_id,
                {"week_start": week.isoformat(), "column": column, "from": ref, "to": uri,
                 "sha256": sha},
                outcome="succeeded",
            )  # fmt: skip
            found.rewritten += 1
    return found


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
