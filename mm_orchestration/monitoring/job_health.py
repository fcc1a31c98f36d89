"""job_health: the state of every job at a glance, refreshed hourly for operators.

Per inventory job over the last 24 hours and 7 days, from Dagster's own run records
(the source of truth, whatever started the run: schedule, sensor, console, backfill or
`mm-jobs run`): runs, succeeded, failed, canceled, skipped and still going (and failed
attempts Dagster retried, requests the run coordinator refused); p50 and p95
of the runs' real durations (start to end) against the job's SLA; how many runs went
past the SLA, measured as the SLA sensor measures them; and the last success. Beside
it, the run queue (queued and started runs) and the Mux dead-letter queue's depth, and
the digest's delivery: digests sent per hour over the last 24 hours (by the hour in
MM_TIMEZONE), and digests sent and missed (their moment passed the grace, after
downtime) over 24 hours and 7 days. Each job's row shows its error rate (failed of
succeeded and failed) beside the inventory's threshold, and the open alert episodes (a job
over its threshold, schedules whose ticks fail, stale assets) are listed.

The asset's page shows the per-job table inline, and the headline numbers are plain
numbers, so the UI's Plots tab charts them across materialisations.
"""

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    RunRecord,
    RunsFilter,
    ScheduleDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    define_asset_job,
)

from mm_orchestration.monitoring import attempts, episodes
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.inventory import JobSpec
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.ledger import OUTCOME_TAG
from mm_orchestration.platform.scheduling import JOB_TAG, RUN_LOGS, spec_for_run
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.text import markdown_table

WINDOWS: tuple[tuple[str, timedelta], ...] = (
    ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)),
)

# Dagster stores a run's creation time in the storage session's time zone, without the
# zone; read a day more than the longest window so a server off UTC loses no run. Runs
# are then placed in windows by their own start time (an epoch, zone-proof).
_QUERY_MARGIN = timedelta(days=1)

_FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def job_of(run: DagsterRun) -> str | None:
    """The inventory name a run belongs to: its mm/job tag (or job name), else its assets."""
    spec = spec_for_run(run)
    return spec.name if spec is not None else None


def outcome(record: RunRecord) -> str:
    """succeeded, failed, canceled, skipped, in_progress (queued, starting, started...),
    retried (a failed attempt Dagster retries: its retry's outcome is the run's) or refused
    (a person's request the run coordinator refused: no run of the job; attempts.py)."""
    run = record.dagster_run
    if run.status == DagsterRunStatus.SUCCESS:
        return "skipped" if run.tags.get(OUTCOME_TAG) == "skipped" else "succeeded"
    if run.status == DagsterRunStatus.FAILURE:
        if attempts.will_be_retried(run):
            return "retried"
        return "refused" if attempts.refused_request(run) else "failed"
    if run.status == DagsterRunStatus.CANCELED:
        return "canceled"
    return "in_progress"


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (PostgreSQL's percentile_cont)."""
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class JobWindow:
    """One job over one window: one row of the table."""

    job: str
    window: str
    sla_seconds: int
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("succeeded", "failed", "canceled", "skipped", "in_progress", "retried", "refused"),
            0,
        )
    )
    durations: list[float] = field(default_factory=list)
    over_sla: int = 0

    @property
    def runs(self) -> int:
        return sum(self.counts.values())

    def p(self, q: float) -> float | None:
        value = percentile(sorted(self.durations), q)
        return round(value, 2) if value is not None else None


@dataclass
class Health:
    """What the dashboard shows, computed from run records at `as_of` (epoch seconds)."""

    as_of: float
    windows: list[JobWindow]
    last_success: dict[str, float]  # job -> end time of its latest (non-skipped) success

    def day(self) -> list[JobWindow]:
        return [w for w in self.windows if w.window == WINDOWS[0][0]]


def run_seconds(record: RunRecord, now: float) -> float | None:
    """How long the run took (end - start) or, still going, has taken so far (now - start):
    the SLA sensor's measure."""
    if record.start_time is None:
        return None
    if record.end_time is not None:
        return record.end_time - record.start_time
    if record.dagster_run.status == DagsterRunStatus.STARTED:
        return now - record.start_time
    return None


def summarise(
    records: Iterable[RunRecord], specs: Sequence[JobSpec], now: float
) -> tuple[list[JobWindow], dict[str, float]]:
    """Per job and window: outcomes, durations of finished runs and runs over the SLA."""
    by_name = {spec.name: spec for spec in specs}
    table = {
        (spec.name, label): JobWindow(spec.name, label, spec.sla_seconds)
        for spec in specs
        for label, _ in WINDOWS
    }
    last_success: dict[str, float] = {}
    for record in records:
        name = job_of(record.dagster_run)
        spec = by_name.get(name) if name is not None else None
        if spec is None:
            continue
        result = outcome(record)
        if result == "succeeded" and record.end_time is not None:
            last_success[spec.name] = max(last_success.get(spec.name, 0.0), record.end_time)
        began = (
            record.start_time
            if record.start_time is not None
            else record.create_timestamp.timestamp()
        )
        seconds = run_seconds(record, now)
        for label, span in WINDOWS:
            if began < now - span.total_seconds():
                continue
            row = table[(spec.name, label)]
            row.counts[result] += 1
            if seconds is None:
                continue
            if record.dagster_run.status in _FINISHED:
                row.durations.append(seconds)
            if seconds > spec.sla_seconds:
                row.over_sla += 1
    return list(table.values()), last_success


def latest_success(instance: DagsterInstance, job: str) -> float | None:
    """End time of the job's latest success that was not a skip, beyond the windows too
    (a monthly drill's last success is weeks old). Tagged runs only."""
    for record in instance.get_run_records(
        filters=RunsFilter(tags={JOB_TAG: job}, statuses=[DagsterRunStatus.SUCCESS]),
        limit=50,
    ):
        if outcome(record) == "succeeded" and record.end_time is not None:
            return record.end_time
    return None


def collect(
    instance: DagsterInstance,
    specs: Sequence[JobSpec] = inventory.INVENTORY,
    now: float | None = None,
) -> Health:
    """The dashboard's numbers from the instance's run records: one query for the longest
    window, grouped here by job; one more per job with no success inside it."""
    now = time.time() if now is None else now
    since = datetime.fromtimestamp(now, UTC) - max(span for _, span in WINDOWS) - _QUERY_MARGIN
    records = instance.get_run_records(filters=RunsFilter(created_after=since))
    windows, last_success = summarise(records, specs, now)
    for spec in specs:
        if spec.name not in last_success:
            found = latest_success(instance, spec.name)
            if found is not None:
                last_success[spec.name] = found
    return Health(as_of=now, windows=windows, last_success=last_success)


COLUMNS = [
    TableColumn("job", "string", description="The inventory's name"),
    TableColumn("window", "string", description="24h or 7d, by run start"),
    TableColumn("runs", "int", description="Runs started (or queued) in the window"),
    TableColumn("succeeded", "int"),
    TableColumn("failed", "int"),
    TableColumn("canceled", "int"),
    TableColumn("skipped", "int", description="Succeeded with nothing to do (mm/outcome)"),
    TableColumn("in_progress", "int", description="Queued, starting or running now"),
    TableColumn(
        "retried", "int", description="Failed attempts Dagster retried (counted as their retry)"
    ),
    TableColumn(
        "refused", "int", description="Requests of a person the run coordinator refused (no run)"
    ),
    TableColumn("p50_s", "float", description="Median run duration, finished runs (s)"),
    TableColumn("p95_s", "float", description="95th percentile run duration (s)"),
    TableColumn("sla_s", "int", description="The job's SLA (s)"),
    TableColumn("over_sla", "int", description="Runs longer than the SLA, running ones too"),
    TableColumn("last_success", "string", description="Latest success, local time"),
    TableColumn("failed_pct", "float", description="Failed of succeeded + failed runs (%)"),
    TableColumn(
        "error_rate_alert", "string", description="The inventory's threshold (error_rate_sensor)"
    ),
]


def failed_percent(window: JobWindow) -> float | None:
    """The error rate as error_rate_sensor counts it: skips and cancellations left out."""
    finished = window.counts["succeeded"] + window.counts["failed"]
    return round(100.0 * window.counts["failed"] / finished, 1) if finished else None


def threshold(job: str) -> str:
    try:
        rule = inventory.get(job).error_rate
    except inventory.UnknownJobError:
        return ""
    return str(rule) if rule else "its own rules"


def table(health: Health, timezone: str) -> MetadataValue:
    zone = ZoneInfo(timezone)

    def local(epoch: float | None) -> str | None:
        if epoch is None:
            return None
        return datetime.fromtimestamp(epoch, zone).isoformat(sep=" ", timespec="seconds")

    records = [
        TableRecord(
            {
                "job": w.job,
                "window": w.window,
                "runs": w.runs,
                **w.counts,
                "p50_s": w.p(0.5),
                "p95_s": w.p(0.95),
                "sla_s": w.sla_seconds,
                "over_sla": w.over_sla,
                "last_success": local(health.last_success.get(w.job)),
                "failed_pct": failed_percent(w),
                "error_rate_alert": threshold(w.job),
            }
        )
        for w in health.windows
    ]
    return MetadataValue.table(records=records, schema=TableSchema(columns=COLUMNS))


DIGESTS_PER_HOUR = query(__package__, "digests_per_hour")

DIGEST_TOTALS = query(__package__, "digest_totals")


@dataclass
class DigestDelivery:
    """The digest's side of the dashboard: sent per hour (hour start, count), and sent and
    missed per window (24h, 7d)."""

    per_hour: list[tuple[datetime, int]]
    sent: dict[str, int]
    missed: dict[str, int]


def digest_delivery(conn: psycopg.Connection, now: datetime, timezone: str) -> DigestDelivery:
    """How the digest has been delivering, up to `now`, hours read in `timezone`."""
    per_hour = [
        (hour, int(count))
        for hour, count in conn.execute(DIGESTS_PER_HOUR, {"now": now, "tz": timezone})
    ]
    day, week = (span for _, span in WINDOWS)
    row = conn.execute(DIGEST_TOTALS, {"now": now, "day": day, "week": week}).fetchone()
    sent_day, sent_week, missed_day, missed_week = (int(v) for v in row) if row else (0,) * 4
    return DigestDelivery(
        per_hour,
        sent={"24h": sent_day, "7d": sent_week},
        missed={"24h": missed_day, "7d": missed_week},
    )


HOUR_COLUMNS = [
    TableColumn("hour", "string", description="The hour's start, local time (MM_TIMEZONE)"),
    TableColumn("digests_sent", "int", description="Digests SendGrid accepted in that hour"),
]


def hour_table(delivery: DigestDelivery, timezone: str) -> MetadataValue:
    zone = ZoneInfo(timezone)
    return MetadataValue.table(
        records=[
            TableRecord(
                {
                    "hour": hour.astimezone(zone).isoformat(sep=" ", timespec="minutes"),
                    "digests_sent": count,
                }
            )
            for hour, count in delivery.per_hour
        ],
        schema=TableSchema(columns=HOUR_COLUMNS),
    )


def run_queue(instance: DagsterInstance, this_run: str) -> tuple[int, int]:
    """Runs waiting in the queue, and runs started (this one left out)."""
    queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
    started = instance.get_run_ids(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    return queued, sum(1 for run_id in started if run_id != this_run)


def open_alerts(alerting: Sequence[episodes.Episode], timezone: str) -> str:
    """The open alert episodes (a job over its error-rate threshold, schedules whose ticks
    fail, stale assets), as a markdown table."""
    zone = ZoneInfo(timezone)
    rows = [
        [e.kind, e.subject, e.contact, e.opened_at.astimezone(zone).isoformat(sep=" ")[:16]]
        for e in alerting
    ]
    if not rows:
        return (
            "No open alert: every job is within its error-rate threshold, every schedule "
            "is ticking and every asset is fresh."
        )
    return markdown_table(["alert", "about", "who", "since"], rows)


@asset(key_prefix=["ops"], group_name="operations", kinds={"postgres"})
def job_health(
    context: AssetExecutionContext, portal_db: PortalDatabase, job_settings: JobSettings
) -> MaterializeResult:
    """Runs, outcomes and durations against SLA per job, the run queue, the DLQ depth, and
    digests sent per hour and missed."""
    portal_db.require(
        "portal.mux_webhook_dlq",
        "ops.notification_outbox",
        "ops.digest_periods",
        "ops.alert_episodes",
    )
    health = collect(context.instance)
    with portal_db.connection() as conn:
        row = conn.execute(query("mm_orchestration.features.mux_dlq", "depth")).fetchone()
        digests = digest_delivery(
            conn, datetime.fromtimestamp(health.as_of, UTC), job_settings.timezone
        )
        alerting = episodes.open_episodes(conn)
    queued, started = run_queue(context.instance, context.run_id)
    day = health.day()
    return MaterializeResult(
        metadata={
            "jobs": table(health, job_settings.timezone),
            "as_of": MetadataValue.timestamp(health.as_of),
            "runs_24h": MetadataValue.int(sum(w.runs for w in day)),
            "failures_24h": MetadataValue.int(sum(w.counts["failed"] for w in day)),
            "runs_over_sla_24h": MetadataValue.int(sum(w.over_sla for w in day)),
            "jobs_over_sla": MetadataValue.int(sum(1 for w in day if w.over_sla)),
            "runs_queued": MetadataValue.int(queued),
            "runs_started": MetadataValue.int(started),
            "dlq_depth": MetadataValue.int(int(row[0]) if row else 0),
            "digests_per_hour": hour_table(digests, job_settings.timezone),
            "digests_sent_24h": MetadataValue.int(digests.sent["24h"]),
            "digests_sent_7d": MetadataValue.int(digests.sent["7d"]),
            "digests_missed_24h": MetadataValue.int(digests.missed["24h"]),
            "digests_missed_7d": MetadataValue.int(digests.missed["7d"]),
            "alert_episodes_open": MetadataValue.int(len(alerting)),
            "open_alerts": MetadataValue.md(open_alerts(alerting, job_settings.timezone)),
        }
    )


job_health_refresh = define_asset_job(
    "job_health_refresh",
    selection=[job_health],
    description="Refresh the job health dashboard.",
    tags={"mm/job": "job-health"},
    config=RUN_LOGS,
)

job_health_schedule = ScheduleDefinition(
    name="job_health_schedule",
    job=job_health_refresh,
    cron_schedule="2 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Hourly: refresh the job health dashboard.",
)
