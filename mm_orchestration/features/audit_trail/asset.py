"""ops/audit_trail: the day's audit trail for compliance, one partition per Sydney day.

Who did what, when, to what and how it ended, from `ops.audit_log`: every console action
(launches, refusals, schedule switches, wipes, downloads), every `mm-jobs run` and DLQ
tool, and what the jobs record themselves (escalations, clean-ups). The materialisation
shows the day's counts by person and by action, a table of the entries, and links to the
console's CSV download of that day (all of it, or one person or action: add
`&person=...` or `&action=...` to the link). It reads; it never changes the log.

Its check `audit_chain_verifies` (ERROR) walks the whole hash chain every day (chain.py)
and also holds it to the head the previous materialisation recorded, which lives in
Dagster's storage, outside the portal database: a chain rewritten or cut short since
then is caught even if its head row was rewound. A failure alerts compliance once per
break (monitoring/check_alerts.py).
"""

from datetime import date
from urllib.parse import urlencode

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
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
from mm_orchestration.features.audit_trail.chain import Head, Verdict, verify
from mm_orchestration.monitoring.check_alerts import check_alert_sensor
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.scheduling import run_logs_for
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE
from mm_orchestration.platform.text import markdown_cell, markdown_table

SYDNEY = BUSINESS_TIMEZONE
PREVIEW_ROWS = 200
CHAIN_CHECK = "audit_chain_verifies"
HEAD_KEY = "audit_chain_head"  # the whole chain's head when verified: the next day's anchor
ANCHOR_LOOKBACK = 400  # materialisations searched back for the last verified head

audit_trail_days = DailyPartitionsDefinition(start_date="2026-01-01", timezone=SYDNEY, end_offset=0)


def _text(value: object) -> str:
    """A column's text; an empty column (None, or pandas' NaN for it) is blank."""
    import pandas as pd  # imported here: pandas costs every light run 2 s

    return "" if value is None or pd.isna(value) else str(value)  # type: ignore[call-overload]


def previous_head(context: AssetExecutionContext) -> Head | None:
    """The chain's head the newest materialisation of this asset that verified it recorded,
    if any (one whose check failed records none: the anchor stays the last good head)."""
    records = context.instance.fetch_materializations(context.asset_key, limit=ANCHOR_LOOKBACK)
    for record in records.records:
        materialization = record.asset_materialization
        value = materialization.metadata.get(HEAD_KEY) if materialization else None
        if value is None:
            continue
        try:
            return Head.parse(str(value.value))
        except ValueError:
            continue  # written by hand or by an older release: not an anchor
    return None


def chain_check(verdict: Verdict) -> AssetCheckResult:
    """The check's verdict, with what its alert to compliance says."""
    problem = verdict.first
    if problem is None:
        return AssetCheckResult(
            check_name=CHAIN_CHECK,
            passed=True,
            description=verdict.summary(),
            metadata={"links_checked": verdict.checked},
        )
    where = problem.where
    listed = "\n".join(f"- {p.kind}: {p.message}" for p in verdict.problems)
    return AssetCheckResult(
        check_name=CHAIN_CHECK,
        passed=False,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"The audit trail's hash chain does not verify: entries were changed, removed or "
            f"added outside the audit path.\n{listed}\n\nKeep the database as it is, run "
            "`mm-jobs audit verify` to see it, and follow docs/audit.md ('When verify fails')."
        ),
        metadata={
            "links_checked": verdict.checked,
            "first_problem": f"{problem.kind}: {problem.message}",
            "alert_key": f"audit-chain:{problem.kind}:{where.replace(' ', '-')}",
            "alert_subject": f"Audit trail tampering detected: {problem.kind} at {where}",
        },
    )


@asset(
    key_prefix=["ops"],
    group_name="compliance",
    partitions_def=audit_trail_days,
    kinds={"postgres", "csv"},
    check_specs=[AssetCheckSpec(CHAIN_CHECK, asset=["ops", "audit_trail"], blocking=False)],
)
def audit_trail(
    context: AssetExecutionContext, portal_db: PortalDatabase, job_settings: JobSettings
) -> MaterializeResult:
    """Who did what in the job console and the jobs on one Sydney day, for compliance."""
    portal_db.require("ops.audit_log")
    day = date.fromisoformat(context.partition_key)
    with portal_db.connection() as conn:
        found = trail.read(conn, trail.Filter.for_day(day, SYDNEY))
    anchor = previous_head(context)
    with portal_db.connection() as conn:
        conn.commit()  # verify takes its own snapshot
        verdict = verify(conn, anchors=[anchor] if anchor else [])
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
            # Where the chain stood at the day's end (`mm-jobs audit verify --expect-head`).
            "day_chain_head": MetadataValue.text(found.head.text() if found.head else "none"),
            # Only a chain that verified: a head recorded from a broken one would make the
            # break tomorrow's anchor, and the check would pass against it.
            **(
                {HEAD_KEY: MetadataValue.text(verdict.head.text())}
                if verdict.ok and verdict.head
                else {}
            ),
        },
        check_results=[chain_check(verdict)],
    )


audit_trail_refresh = define_asset_job(
    "audit_trail_refresh",
    selection=[audit_trail],
    description="The day's audit trail for compliance.",
    tags={"mm/job": "audit-trail"},
    config=run_logs_for(audit_trail),
)

audit_chain_alerts = check_alert_sensor(
    "audit_chain_alert_sensor",
    {CHAIN_CHECK: "compliance"},
    "Alerts compliance when the audit trail's hash chain does not verify (once per break).",
)

# Each Sydney day just after it ends (the partition is the day before the tick).
audit_trail_schedule = build_schedule_from_partitioned_job(
    audit_trail_refresh,
    hour_of_day=0,
    minute_of_hour=20,
    default_status=DefaultScheduleStatus.RUNNING,
)
