"""What monitoring declares: the alert job, the run-status sensors (failure, recovery,
manual runs, SLA, Sentry), the error-rate, schedule-tick and freshness sensors, the
Sentry alert-rule sync and the job-health dashboard."""

import dagster as dg

from mm_orchestration.monitoring.alerts import send_alert
from mm_orchestration.monitoring.error_rate import error_rate_sensor
from mm_orchestration.monitoring.freshness import fresh_as_scheduled, freshness_sensor
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
from mm_orchestration.monitoring.sentry_rules import (
    SentryAlertRules,
    sentry_alert_rules_sensor,
    sentry_alert_rules_sync,
)
from mm_orchestration.monitoring.sentry_sensors import (
    sentry_run_failed_sensor,
    sentry_run_started_sensor,
    sentry_run_succeeded_sensor,
)
from mm_orchestration.monitoring.sla import sla_sensor
from mm_orchestration.monitoring.ticks import schedule_tick_sensor
from mm_orchestration.platform.settings import Settings


def _env(name: str) -> dg.EnvVar | None:
    """The variable as an EnvVar when it is set (read by Dagster where the resource is
    used, never shown in the UI); None when it is not, so a resource without it stays
    valid."""
    variable = dg.EnvVar(name)
    return variable if variable.get_value() else None


def sentry_alert_rules(settings: Settings) -> SentryAlertRules:
    """The Sentry API the error-rate thresholds are set through (docs/settings.md)."""
    host = dg.EnvVar("SENTRY_API_HOST").get_value()
    return SentryAlertRules(
        auth_token=_env("SENTRY_AUTH_TOKEN"),
        organization=_env("SENTRY_ORG"),
        project=_env("SENTRY_PROJECT"),
        api_host=host.strip() if host and host.strip() else "https://sentry.io",
        environment=settings.env,
        http_connect_timeout=settings.http_connect_timeout,
        http_read_timeout=settings.http_read_timeout,
    )


def defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[fresh_as_scheduled(job_health, job_health_schedule)],
        jobs=[send_alert, job_health_refresh, sentry_alert_rules_sync],
        schedules=[job_health_schedule],
        sensors=[
            job_failure_sensor,
            job_recovery_sensor,
            manual_run_audit_sensor,
            sla_sensor,
            sentry_run_started_sensor,
            sentry_run_succeeded_sensor,
            sentry_run_failed_sensor,
            error_rate_sensor,
            schedule_tick_sensor,
            freshness_sensor,
            sentry_alert_rules_sensor,
        ],
        resources={"sentry_alert_rules": sentry_alert_rules(settings)},
    )
