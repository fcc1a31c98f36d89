"""The runtime SLA: a run still going past its job's SLA raises one alert while it runs.

Every 30 seconds the sensor looks at started runs of inventory jobs; one running for
longer than its SLA (share-link expiry: 60 s) requests one `send_alert` run, keyed
by the run id so a slow run is reported once. A job whose every run is slow (a slow
database makes each Mux replay take 3 minutes) is one alert, not one per run: while no
run of the job has finished within its SLA for 15 minutes since the last slow one, a new
slow run is folded into the alert already sent (`send_alert` decides: `slow_stretch`).
The much larger hard limit is the `dagster/max_runtime` tag every job carries, which run
monitoring enforces.
"""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mm_orchestration.monitoring.alerts import alert_request, send_alert
from mm_orchestration.platform import inventory
from mm_orchestration.platform.scheduling import spec_for_run

# A slow stretch is over once the job's runs have finished within the SLA this long.
SETTLE = timedelta(minutes=15)
LAST_SLA_ALERT = """
SELECT details->>'run_id' FROM ops.audit_log
 WHERE action = 'job_sla_alert' AND job_name = %(job)s
 ORDER BY id DESC LIMIT 1
"""


def slow_stretch(instance: DagsterInstance, conn: Any, job: str, run_id: str) -> str | None:
    """The run whose SLA alert the slow run `run_id` belongs with, or None when it starts
    a stretch of its own (and is alerted): the job's last SLA alert, unless since then a
    run of the job finished within its SLA and none was slow for `SETTLE`."""
    try:
        spec = inventory.get(job)
    except inventory.UnknownJobError:
        return None
    row = conn.execute(LAST_SLA_ALERT, {"job": spec.name}).fetchone()
    alerted = instance.get_run_record_by_id(row[0]) if row and row[0] else None
    current = instance.get_run_record_by_id(run_id)
    if alerted is None or alerted.start_time is None or current is None:
        return None
    if alerted.dagster_run.run_id == run_id:
        return alerted.dagster_run.run_id  # the same run asked twice
    began = current.start_time or time.time()
    since = datetime.fromtimestamp(alerted.start_time, UTC) - timedelta(days=1)
    if alerted.end_time is None:
        return alerted.dagster_run.run_id  # the alerted run is still going: one stretch
    first = alerted.start_time
    spans = [
        (r.start_time, r.end_time)
        for r in instance.get_run_records(
            filters=RunsFilter(
                tags={"mm/job": spec.name},
                statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE],
                created_after=since,
            ),
            limit=500,
        )
        if r.start_time is not None and r.end_time is not None and first <= r.start_time < began
    ]
    last_slow = max(
        [alerted.end_time] + [end for start, end in spans if end - start > spec.sla_seconds]
    )
    fast_since = any(end - start <= spec.sla_seconds and start >= last_slow for start, end in spans)
    if fast_since and began - last_slow >= SETTLE.total_seconds():
        return None
    return alerted.dagster_run.run_id


def overdue_runs(
    instance: DagsterInstance, now: float
) -> list[tuple[str, inventory.JobSpec, float]]:
    """(run id, job, seconds running) for every started run past its job's SLA."""
    found = []
    for record in instance.get_run_records(
        filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=200
    ):
        spec = spec_for_run(record.dagster_run)
        if spec is None:
            continue
        run = record.dagster_run
        if record.start_time is not None and now - record.start_time > spec.sla_seconds:
            found.append((run.run_id, spec, now - record.start_time))
    return found


@sensor(job=send_alert, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def sla_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    """Alert once for each run that outlives its job's SLA."""
    late = overdue_runs(context.instance, time.time())
    if not late:
        return SkipReason("no running job is past its SLA")
    requests = [
        alert_request(
            key=f"sla:{run_id}",
            contact=spec.escalate_to,
            subject=f"{spec.name} is past its {spec.sla_seconds} s SLA (run {run_id[:8]})",
            body=(
                f"Run {run_id} of {spec.name} has been running for {seconds:.0f} s; its SLA is "
                f"{spec.sla_seconds} s and it will be stopped at {spec.max_runtime_seconds} s. "
                "Check the run in the job console."
            ),
            action="job_sla_alert",
            source_job=spec.name,
            details={"run_id": run_id, "seconds": round(seconds)},
            tag="sla",
            fold_into="sla",
            failed_run=run_id,
        )
        for run_id, spec, seconds in late
    ]
    return SensorResult(run_requests=requests)
