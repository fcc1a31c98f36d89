"""The residency report itself: its rows read from the database and judged against the
region rules, rendered as CSV (every row) and an HTML page, and the email that carries both
to compliance."""

from __future__ import annotations

from datetime import date, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import psycopg

from mm_orchestration.features.residency.regions import HOME_COUNTRY, UNKNOWN, country, vendors
from mm_orchestration.platform import spreadsheets
from mm_orchestration.platform.outbox import Renderer
from mm_orchestration.platform.outbox.mailer import Attachment, Email
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.text import markdown_table

if TYPE_CHECKING:  # pandas costs a light run 2 s; imported where a report is built
    import pandas as pd

# Why a row has its status: one reason per row, in the CSV beside the status.
REASON_ALLOWED = "in Australia"
REASON_OFFSHORE = "tenant data outside Australia"
REASON_UNKNOWN = "region not in the region-to-country map: where this data is is not known"
REASON_VENDOR = (
    "vendor outside Australia, disclosed: the residency rule judges the "
    "database, its backups and videos"
)
PREVIEW_LIMIT = 50


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


@cache
def spaces() -> str:
    """What Python's str.strip() removes, so the SQL that groups regions and the Python that
    looks them up trim a region alike (a trailing no-break space included). Worked out on
    first use: it reads every code point, half a second every process would pay at import."""
    return "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def report_params() -> dict[str, Any]:
    return {
        "v_system": [v.system for v in vendors()],
        "v_vendor": [v.vendor for v in vendors()],
        "v_categories": [v.data_categories for v in vendors()],
        "v_region": [v.region for v in vendors()],
        "v_source": [v.source for v in vendors()],
        "db_categories": "projects, tasks, users, share links, analytics events",
        "video_categories": "video files, titles, playback",
        "backup_categories": "portal database backups and history (point-in-time restore)",
        "backup_evidence": (
            "portal.tenants.data_region (Neon keeps a project's backups and history "
            "in the project's region)"
        ),
        "spaces": spaces(),
    }


def build_frame(conn: psycopg.Connection, read_at: datetime) -> pd.DataFrame:
    """The report as a table: one row per tenant and place its data lives."""
    import pandas as pd

    cursor = conn.execute(query(__package__, "report_rows"), report_params())
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
    import pandas as pd

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
    vendor_rows = pd.DataFrame(
        [(v.system, v.vendor, v.region, country(v.region), v.source) for v in vendors()],
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
        + vendor_rows.to_html(index=False, border=0)
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
