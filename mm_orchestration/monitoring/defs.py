"""What monitoring declares: the alert job, the run-status sensors (failure, recovery,
manual runs, SLA, Sentry) and the job-health dashboard."""

import dagster as dg

from mm_orchestration.monitoring.alerts import send_alert
from mm_orchestration.monitoring.job_health import (
    job_health,
    job_health_refresh,
    job_health_schedule,
)
from mm_orchestration.monitoring.run_alerts import (
    job_failure_sensor,
    job_recovery_sensor,
    manual_run_audit_sensor,
)
from mm_orchestration.monitoring.sentry_sensors import (
    sentry_run_failed_sensor,
    sentry_run_started_sensor,
    sentry_run_succeeded_sensor,
)
from mm_orchestration.monitoring.sla import sla_sensor
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[job_health],
        jobs=[send_alert, job_health_refresh],
        schedules=[job_health_schedule],
        sensors=[
            job_failure_sensor,
            job_recovery_sensor,
            manual_run_audit_sensor,
            sla_sensor,
            sentry_run_started_sensor,
            sentry_run_succeeded_sensor,
            sentry_run_failed_sensor,
        ],
    )
