"""The floor for benchmarks/scheduled_run_latency.py: Dagster's own trivial scheduled job.

One op that does nothing, in the run's own process, on an every-other-minute schedule:
what any scheduled run costs on this machine before it does any work.
"""

import dagster as dg


@dg.op
def do_nothing() -> None:
    """Nothing at all."""


@dg.job(executor_def=dg.in_process_executor)
def trivial() -> None:
    do_nothing()


defs = dg.Definitions(
    jobs=[trivial],
    schedules=[
        dg.ScheduleDefinition(
            name="trivial_schedule",
            job=trivial,
            cron_schedule="*/2 * * * *",
            execution_timezone="Australia/Sydney",
            default_status=dg.DefaultScheduleStatus.RUNNING,
        )
    ],
)
