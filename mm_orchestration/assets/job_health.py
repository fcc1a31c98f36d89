"""job_health: the state of every job at a glance, refreshed hourly for operators.

Per inventory job over the last 24 hours and 7 days, from `ops.job_runs`: runs,
successes, failures, skips, p50 and p95 duration against the job's SLA, and the last
success; plus the Mux dead-letter queue's depth. The materialisation shows a
markdown table and a chart of p95 durations against SLAs, embedded as a PNG, so the
asset's page in the UI is the dashboard.
"""

import base64
import io
from typing import Any

from dagster import (
    AssetExecutionContext,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
)

from mm_orchestration import inventory
from mm_orchestration.resources import PortalDatabase
from mm_orchestration.sensors.dlq_depth import DEPTH_QUERY

SUMMARY = """
SELECT job_name, w.label,
       count(*) FILTER (WHERE status <> 'running') AS runs,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'skipped') AS skipped,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)
           FILTER (WHERE status = 'succeeded') AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
           FILTER (WHERE status = 'succeeded') AS p95_ms,
       max(finished_at) FILTER (WHERE status = 'succeeded') AS last_success
  FROM ops.job_runs
  JOIN (VALUES ('24h', interval '24 hours'), ('7d', interval '7 days')) AS w(label, span)
    ON started_at >= now() - w.span
 GROUP BY job_name, w.label
"""


def summarise(conn: Any) -> tuple[list[dict[str, Any]], int]:
    found = {(r[0], r[1]): r[2:] for r in conn.execute(SUMMARY).fetchall()}
    rows = []
    for spec in inventory.INVENTORY:
        for label in ("24h", "7d"):
            runs, ok, failed, skipped, p50, p95, last = found.get(
                (spec.name, label), (0, 0, 0, 0, None, None, None)
            )
            rows.append(
                {
                    "job": spec.name,
                    "window": label,
                    "runs": runs,
                    "succeeded": ok,
                    "failed": failed,
                    "skipped": skipped,
                    "p50_s": round(p50 / 1000, 2) if p50 is not None else None,
                    "p95_s": round(p95 / 1000, 2) if p95 is not None else None,
                    "sla_s": spec.sla_seconds,
                    "last_success": last.isoformat(timespec="minutes") if last else None,
                }
            )
    depth_row = conn.execute(DEPTH_QUERY).fetchone()
    return rows, int(depth_row[0]) if depth_row else 0


def markdown(rows: list[dict[str, Any]], depth: int) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = [
        "| job | window | runs | ok | failed | skipped | p50 s | p95 s | SLA s | last success |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        over = r["p95_s"] is not None and r["p95_s"] > r["sla_s"]
        lines.append(
            f"| {r['job']} | {r['window']} | {r['runs']} | {r['succeeded']} | {r['failed']} | "
            f"{r['skipped']} | {cell(r['p50_s'])} | {cell(r['p95_s'])}{' ⚠' if over else ''} | "
            f"{r['sla_s']} | {cell(r['last_success'])} |"
        )
    lines.append(f"\nMux dead-letter queue depth (pending + dead): **{depth}**")
    return "\n".join(lines)


def chart_png(rows: list[dict[str, Any]]) -> bytes:
    """p95 duration against SLA per job over 24 hours, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    day = [r for r in rows if r["window"] == "24h"]
    names = [r["job"] for r in day]
    p95 = [r["p95_s"] or 0 for r in day]
    sla = [r["sla_s"] for r in day]
    figure, axis = plt.subplots(figsize=(8, 3.5), dpi=100)
    positions = range(len(names))
    axis.barh([p + 0.2 for p in positions], sla, height=0.4, color="#d0d7de", label="SLA")
    axis.barh(
        [p - 0.2 for p in positions],
        p95,
        height=0.4,
        color=["#cf222e" if d > s else "#2da44e" for d, s in zip(p95, sla, strict=True)],
        label="p95 (24 h)",
    )
    axis.set_yticks(list(positions), names, fontsize=8)
    axis.set_xscale("symlog")
    axis.set_xlabel("seconds")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


@asset(key_prefix=["ops"], group_name="operations", kinds={"postgres"})
def job_health(context: AssetExecutionContext, portal_db: PortalDatabase) -> MaterializeResult:
    """Runs, failures and durations against SLA per job, and the DLQ depth."""
    portal_db.require("ops.job_runs", "portal.mux_webhook_dlq")
    with portal_db.connection() as conn:
        rows, depth = summarise(conn)
    png = base64.b64encode(chart_png(rows)).decode()
    day = [r for r in rows if r["window"] == "24h"]
    return MaterializeResult(
        metadata={
            "summary": MetadataValue.md(markdown(rows, depth)),
            "chart": MetadataValue.md(f"![p95 duration against SLA](data:image/png;base64,{png})"),
            "failures_24h": sum(r["failed"] for r in day),
            "runs_24h": sum(r["runs"] for r in day),
            "dlq_depth": depth,
            "jobs_over_sla": sum(
                1 for r in day if r["p95_s"] is not None and r["p95_s"] > r["sla_s"]
            ),
        }
    )


job_health_refresh = define_asset_job(
    "job_health_refresh",
    selection=[job_health],
    description="Refresh the job health dashboard.",
    tags={"mm/job": "job-health"},
)

job_health_schedule = ScheduleDefinition(
    name="job_health_schedule",
    job=job_health_refresh,
    cron_schedule="2 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Hourly: refresh the job health dashboard.",
)
