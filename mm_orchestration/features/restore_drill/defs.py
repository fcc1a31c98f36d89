"""What the restore drill declares: backup-verify, its schedule (days 1-7, run on the first
business day; every tick in staging), the drill resource only it uses, and the daily check
that the next drill is not due or late (`ops/backup_drills`, alerting compliance)."""

import dagster as dg

from mm_orchestration.features.restore_drill.due_check import (
    backup_drills,
    restore_drill_due,
    restore_drill_due_alerts,
    restore_drill_due_job,
    restore_drill_due_schedule,
)
from mm_orchestration.features.restore_drill.job import (
    backup_verify,
    skip_unless_first_business_day,
)
from mm_orchestration.features.restore_drill.resource import RestoreDrill
from mm_orchestration.platform.scheduling import scheduled_job
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    drill = RestoreDrill(
        method=settings.drill_method,
        pg_bin_dir=settings.pg_bin_dir,
        neon_api_key=dg.EnvVar("NEON_API_KEY") if settings.neon_api_key else None,
        neon_project_id=settings.neon_project_id,
        neon_api_host=settings.neon_api_host,
        http_connect_timeout=settings.http_connect_timeout,
        http_read_timeout=settings.http_read_timeout,
    )
    should_run = None if settings.env == "staging" else skip_unless_first_business_day
    return dg.Definitions.merge(
        scheduled_job(settings, "backup-verify", backup_verify, should_run=should_run),
        dg.Definitions(
            assets=[backup_drills],
            asset_checks=[restore_drill_due],
            jobs=[restore_drill_due_job],
            schedules=[restore_drill_due_schedule],
            sensors=[restore_drill_due_alerts],
            resources={"restore_drill": drill},
        ),
    )
