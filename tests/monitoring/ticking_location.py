"""The daemon test's second code location: one schedule every minute, in a code server
the test stops before a tick (a location that is down when its schedule is due)."""

import dagster as dg


@dg.op
def nothing() -> None:
    """Stands in for share-link expiry's work."""


@dg.job
def stub_job() -> None:
    nothing()


share_link_expiry_schedule = dg.ScheduleDefinition(
    name="share_link_expiry_schedule",
    job=stub_job,
    cron_schedule="* * * * *",
    execution_timezone="Australia/Sydney",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

defs = dg.Definitions(jobs=[stub_job], schedules=[share_link_expiry_schedule])
