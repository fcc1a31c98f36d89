"""ops/audit_trail: the day's audit trail for compliance, one partition per Sydney day.

Who did what, when, to what and how it ended, from `ops.audit_log`: every console action
(launches, refusals, schedule switches, wipes, downloads), every `mm-jobs run` and DLQ
tool, and what the jobs record themselves (escalations, clean-ups). The materialisation
shows the day's counts by person and by action, a table of the entries, and links to the
console's CSV download of that day (all of it, or one person or action: add
`&person=...` or `&action=...` to the link). It reads; it never changes the log.
"""

from datetime import date
from urllib.parse import urlencode

from dagster import (
    AssetExecutionContext,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from mm_orchestration.features.audit_trail import query as trail
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE
from mm_orchestration.platform.text import markdown_cell, markdown_table

SYDNEY = BUSINESS_TIMEZONE
PREVIEW_ROWS = 200

audit_trail_days = DailyPartitionsDefinition(start_date="2026-01-01", timezone=SYDNEY, end_offset=0)


def _text(value: object) -> str:
    """A column's text; an empty column (None, or pandas' NaN for it) is blank."""
    import pandas as pd  # imported here: pandas costs every light run 2 s

    return "" if value is None or pd.isna(value) else str(value)  # type: ignore[call-overload]


@asset(
    key_prefix=["ops"],
    group_name="compliance",
    partitions_def=audit_trail_days,
    kinds={"postgres", "csv"},
)
def audit_trail(
    context: AssetExecutionContext, portal_db: PortalDatabase, job_settings: JobSettings
) -> MaterializeResult:
    """Who did what in the job console and the jobs on one Sydney day, for compliance."""
    portal_db.require("ops.audit_log")
    day = date.fromisoformat(context.partition_key)
    with portal_db.connection() as conn:
        found = trail.read(conn, trail.Filter.for_day(day, SYDNEY))
    frame = found.frame
    by_person = frame.groupby(frame["actor"]).size().sort_values(ascending=False)
    by_action = frame.groupby(frame["action"]).size().sort_values(ascending=False)
    refused = int((frame["outcome"] == "refused").sum()) if not frame.empty else 0
    # Every cell escaped (markdown_cell): a person, a target or an action is text anyone
    # could have sent, and must not render as a link, an image or HTML on this page.
    table = markdown_table(
        ["time (UTC)", "person", "role", "action", "target", "outcome"],
        [
            (
                row["occurred_at"].strftime("%H:%M:%S"),
                _text(row["actor"]),
                _text(row["role"]),
                _text(row["action"]),
                _text(row["target"]) or _text(row["job_name"]),
                _text(row["outcome"]),
            )
            for row in frame.head(PREVIEW_ROWS).to_dict("records")
        ],
    )
    base = job_settings.reports_url.rstrip("/")
    download = f"{base}/audit-trail.csv?{urlencode({'day': day.isoformat()})}"
    return MaterializeResult(
        metadata={
            "entries": MetadataValue.int(len(frame)),
            "truncated": MetadataValue.bool(found.truncated),
            **({"narrow": MetadataValue.text(found.note)} if found.note else {}),
            "people": MetadataValue.int(len(by_person)),
            "refused": MetadataValue.int(refused),
            "by_person": MetadataValue.md(
                "\n".join(f"- {markdown_cell(k)}: {v}" for k, v in by_person.items()) or "nobody"
            ),
            "by_action": MetadataValue.md(
                "\n".join(f"- {markdown_cell(k)}: {v}" for k, v in by_action.items()) or "nothing"
            ),
            "entries_preview": MetadataValue.md(table),
            "download_csv": MetadataValue.url(download),
            "filter_hint": MetadataValue.text(
                "Add &person=<email> or &action=<action> to the download link to filter it."
            ),
        }
    )


audit_trail_refresh = define_asset_job(
    "audit_trail_refresh",
    selection=[audit_trail],
    description="The day's audit trail for compliance.",
    tags={"mm/job": "audit-trail"},
)

# Each Sydney day just after it ends (the partition is the day before the tick).
audit_trail_schedule = build_schedule_from_partitioned_job(
    audit_trail_refresh,
    hour_of_day=0,
    minute_of_hour=20,
    default_status=DefaultScheduleStatus.RUNNING,
)
