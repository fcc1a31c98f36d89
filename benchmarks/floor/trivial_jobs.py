"""The floor for benchmarks/scale.py: Dagster's own trivial jobs, with no schedule.

`trivial` does nothing in the run's own process: what any queued run costs on this machine
before it does any work. `trivial_fails` raises at once: the floor's share of failures.
"""

import dagster as dg


@dg.op
def do_nothing() -> None:
    """Nothing at all."""


@dg.op
def fail_at_once() -> None:
    """Fail, as a run of the failing share does."""
    raise dg.Failure(description="the floor's failing run", allow_retries=False)


@dg.job(executor_def=dg.in_process_executor)
def trivial() -> None:
    do_nothing()


@dg.job(executor_def=dg.in_process_executor)
def trivial_fails() -> None:
    fail_at_once()


defs = dg.Definitions(jobs=[trivial, trivial_fails])
