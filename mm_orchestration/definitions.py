"""The Dagster code location: every job, asset, schedule, sensor and resource, assembled.

Settings are read when Dagster loads the location (not at import), so a bad value
fails the load with the setting's name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

import dagster as dg

from mm_orchestration.features.analytics.asset import (
    analytics_hourly,
    analytics_rollup,
    analytics_schedule,
)
from mm_orchestration.features.audit_trail.asset import (
    audit_trail,
    audit_trail_refresh,
    audit_trail_schedule,
)
from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.features.invitations.job import invite_cleanup
from mm_orchestration.features.mux_dlq.depth_sensor import dlq_depth_sensor
from mm_orchestration.features.mux_dlq.job import mux_webhook_retry
from mm_orchestration.features.mux_dlq.operations import dlq_discard, dlq_requeue
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.features.residency.asset import (
    residency_report,
    residency_report_job,
    residency_schedule,
)
from mm_orchestration.features.restore_drill.job import (
    backup_verify,
    skip_unless_first_business_day,
)
from mm_orchestration.features.restore_drill.resource import RestoreDrill
from mm_orchestration.features.retention.job import storage_retention
from mm_orchestration.features.share_links.job import share_link_expiry
from mm_orchestration.features.suppressions.job import notification_suppression_cleanup
from mm_orchestration.features.tenant_health.asset import (
    tenant_health_check,
    tenant_health_daily,
    tenant_health_schedule,
)
from mm_orchestration.monitoring.alerts import send_alert
from mm_orchestration.monitoring.job_health import (
    job_health,
    job_health_refresh,
    job_health_schedule,
)
from mm_orchestration.monitoring.resource import Monitoring
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
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox.mailer import Mailer
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.scheduling import inventory_schedule, window_key, with_pod_tags
from mm_orchestration.platform.settings import Settings

# Dagster itself passes `owners` (a beta parameter) when it binds resources to the jobs a
# sensor requests (ours: send_alert), so every process would warn about a parameter we
# never use. Only that warning is silenced.
warnings.filterwarnings(
    "ignore", message="Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning
)

# The operational jobs that are built, keyed by their inventory name.
JOBS = {
    "share-link-expiry": share_link_expiry,
    "notification-digest": notification_digest,
    "invite-cleanup": invite_cleanup,
    "notification-suppression-cleanup": notification_suppression_cleanup,
    "mux-webhook-retry": mux_webhook_retry,
    "backup-verify": backup_verify,
    "storage-retention": storage_retention,
}

# Inventory jobs built as partitioned asset jobs (their schedules come from assets/).
ASSET_JOBS = {
    "residency-report": residency_report_job,
    "analytics-rollup": analytics_rollup,
    "tenant-health-check": tenant_health_check,
}

# Jobs an operator or a sensor launches; they have no schedule of their own.
SUPPORT_JOBS: list[Any] = [
    send_alert,
    dlq_requeue,
    dlq_discard,
    job_health_refresh,
    audit_trail_refresh,
]


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources bound to environment variables, so secrets never appear in the UI."""
    return {
        # Dagster's default, named so that it does not warn (the default `fs_io_manager` is
        # superseded): step outputs under DAGSTER_HOME/storage, so a failed step can be
        # re-executed alone.
        "io_manager": dg.FilesystemIOManager(),
        "portal_db": PortalDatabase(
            url=dg.EnvVar("DATABASE_URL"),
            direct_url=(dg.EnvVar("DATABASE_DIRECT_URL") if settings.database_direct_url else None),
        ),
        "job_settings": JobSettings.from_settings(settings),
        "monitoring": Monitoring(
            dsn=dg.EnvVar("SENTRY_DSN") if settings.sentry_dsn else None,
            environment=settings.env,
            timezone=settings.timezone,
            crons={spec.name: settings.cron_for(spec) for spec in inventory.INVENTORY},
            http_connect_timeout=settings.http_connect_timeout,
            http_read_timeout=settings.http_read_timeout,
        ),
        "restore_drill": RestoreDrill(
            method=settings.drill_method,
            pg_bin_dir=settings.pg_bin_dir,
            neon_api_key=dg.EnvVar("NEON_API_KEY") if settings.neon_api_key else None,
            neon_project_id=settings.neon_project_id,
            neon_api_host=settings.neon_api_host,
            http_connect_timeout=settings.http_connect_timeout,
            http_read_timeout=settings.http_read_timeout,
        ),
        "report_store": ReportStore.from_settings(settings),
        "mux": MuxWebhooks(
            signing_secret=dg.EnvVar("MUX_WEBHOOK_SECRET") if settings.mux_webhook_secret else None,
            alert_threshold=settings.dlq_alert_threshold,
        ),
        "mailer": Mailer(
            api_key=dg.EnvVar("SENDGRID_API_KEY") if settings.sendgrid_api_key else None,
            api_host=settings.sendgrid_api_host,
            mail_from=settings.mail_from,
            mail_dir=os.path.join(settings.data_dir, "mail"),
            connect_timeout_seconds=settings.http_connect_timeout,
            read_timeout_seconds=settings.http_read_timeout,
        ),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    jobs, asset_jobs = dict(JOBS), dict(ASSET_JOBS)
    if settings.run_launcher == "k8s":
        jobs = {name: with_pod_tags(job, inventory.get(name)) for name, job in jobs.items()}
        asset_jobs = {n: with_pod_tags(job, inventory.get(n)) for n, job in asset_jobs.items()}
    schedules: list[Any] = [
        inventory_schedule(
            inventory.get(name),
            job,
            settings,
            window=window_key,
            should_run=_should_run(name, settings),
        )
        for name, job in jobs.items()
    ]
    schedules += [
        analytics_schedule(settings, asset_jobs["analytics-rollup"]),
        tenant_health_schedule(settings, asset_jobs["tenant-health-check"]),
        residency_schedule(settings, asset_jobs["residency-report"]),
        job_health_schedule,
        audit_trail_schedule,
    ]
    return dg.Definitions(
        assets=[analytics_hourly, tenant_health_daily, residency_report, job_health, audit_trail],
        jobs=[*jobs.values(), *SUPPORT_JOBS, *asset_jobs.values()],
        schedules=schedules,
        sensors=[
            dlq_depth_sensor,
            job_failure_sensor,
            job_recovery_sensor,
            manual_run_audit_sensor,
            sla_sensor,
            sentry_run_started_sensor,
            sentry_run_succeeded_sensor,
            sentry_run_failed_sensor,
        ],
        resources=build_resources(settings),
        # The support jobs (alerts, DLQ tools, the dashboard) are single short steps: run
        # them in the run's own process. Inventory jobs name theirs in the inventory.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_env())


def _should_run(job_name: str, settings: Settings) -> Callable[[datetime], str | None] | None:
    """backup-verify fires on days 1-7 and runs only on the first business day (not staging)."""
    if job_name == "backup-verify" and settings.env != "staging":
        return skip_unless_first_business_day
    return None
