"""The runtime SLA: a run still going past its job's SLA raises one alert while it runs.

Every 30 seconds the sensor looks at started runs of inventory jobs; one running for
longer than its SLA (share-link expiry: 60 s) requests one `send_alert` run, keyed
by the run id so a slow run is reported once. The much larger hard limit is the
`dagster/max_runtime` tag every job carries, which run monitoring enforces.
"""

import time

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
        )
        for run_id, spec, seconds in late
    ]
    return SensorResult(run_requests=requests)
