"""The daemon test's main code location: the project's own definitions (every sensor, the
alert job, the rollup and its schedule), plus one schedule whose function raises, as a
schedule with a bug in it does. Served by `dagster api grpc --python-file`."""

import dagster as dg

from mm_orchestration.definitions import build_definitions
from mm_orchestration.platform.settings import Settings

RAISING_ERROR = "the tenant list could not be read: tenants.json is empty"


@dg.schedule(
    name="tenant_health_raising_schedule",
    job_name="tenant_health_check",
    cron_schedule="* * * * *",
    execution_timezone="Australia/Sydney",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def tenant_health_raising_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    raise ValueError(RAISING_ERROR)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        build_definitions(Settings.from_env()),
        dg.Definitions(schedules=[tenant_health_raising_schedule]),
    )
