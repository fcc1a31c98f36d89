"""Which finished runs count: a failed attempt that Dagster retries is not the job's last
word, and a request the run coordinator refused is not a run of the job.

- **A retried attempt.** With run retries on (dagster.yaml `run_retries`), a run whose
  process died fails and Dagster tags it `dagster/will_retry: true`, then launches its
  retry (`dagster/retry_number`), which inherits its tags. The attempt is not final: its
  retry is. The failure alert waits for the final attempt (a retry that succeeds alerts
  nobody), and the error rate, the streak and the dashboard count the pair as one run,
  the retry's outcome. A run Dagster cannot retry (it has no code location behind it: a
  run of `mm-jobs run`; the daemon says "Run does not have an external job origin") is
  final whatever its tag says.
- **A refused request.** The run coordinator (platform/run_config.py) fails a run it
  refuses before it is queued (a partition the job lacks, config that reads the
  environment), tagged `mm/refused` with its own run id and never retried. Nothing of
  the job ran: a person's request is answered to that person (the run list and the run's
  log say why), never alerted, never counted; a request no person made (a schedule's, a
  sensor's, automation's) has nobody to tell, so it alerts the job's owner and counts as a
  failure of the job.
"""

from __future__ import annotations

import time
from typing import Any

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from mm_orchestration.platform.run_config import REFUSED_TAG

# Dagster's tags (dagster._core.storage.tags) for run retries.
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_NUMBER_TAG = "dagster/retry_number"
# Tags of the runs no person asked for: a schedule's, a sensor's, automation's.
_SYSTEM_REQUESTS = (
    "dagster/schedule_name",
    "dagster/sensor_name",
    "dagster/auto_materialize",
    "dagster/from_automation_condition",
)
# Dagster tags a failed run will_retry just after it stores the failure (the same call):
# a sensor that reads the run in between waits this long for the tag.
_TAG_WAIT_SECONDS = (0.2, 0.5, 1.0)


def will_be_retried(run: DagsterRun) -> bool:
    """A failed attempt Dagster will retry: tagged so, and retryable (a code location
    behind it)."""
    return (
        run.status == DagsterRunStatus.FAILURE
        and str(run.tags.get(WILL_RETRY_TAG, "")).lower() == "true"
        and run.remote_job_origin is not None
    )


def refused(run: DagsterRun) -> bool:
    """Refused by the run coordinator before it was queued (the tag names this very run:
    a re-execution of a refused run inherits its parent's tag, not the refusal)."""
    return run.status == DagsterRunStatus.FAILURE and run.tags.get(REFUSED_TAG) == run.run_id


def requested_by_a_person(run: DagsterRun) -> bool:
    """Not a schedule's, a sensor's or automation's: someone asked (the console, GraphQL,
    `dagster job launch`, a backfill someone launched)."""
    return not any(tag in run.tags for tag in _SYSTEM_REQUESTS)


def refused_request(run: DagsterRun) -> bool:
    """A person's request the run coordinator refused: answered to them, not the job's."""
    return refused(run) and requested_by_a_person(run)


def counts(run: DagsterRun) -> bool:
    """Whether the finished run is one of the job's runs as alerts and rates count them:
    not an attempt Dagster retries, not a person's refused request."""
    return not will_be_retried(run) and not refused_request(run)


def settled(instance: DagsterInstance, run: DagsterRun) -> DagsterRun:
    """`run` as Dagster leaves it once it has failed: with its `dagster/will_retry` tag
    when run retries are on (the tag is written just after the failure a sensor may
    already have seen: read again for a moment)."""
    if run.status != DagsterRunStatus.FAILURE or WILL_RETRY_TAG in run.tags:
        return run
    if not instance.run_retries_enabled:
        return run
    for pause in _TAG_WAIT_SECONDS:
        time.sleep(pause)
        found = instance.get_run_by_id(run.run_id)
        if found is None:
            return run
        if WILL_RETRY_TAG in found.tags:
            return found
    return run


def retry_of(instance: DagsterInstance, run: DagsterRun) -> tuple[int, DagsterRun | None]:
    """(n, the attempt before it) when `run` is Dagster's automatic retry n of a failed
    run, else (0, None)."""
    number = run.tags.get(RETRY_NUMBER_TAG)
    if not number or not run.parent_run_id:
        return 0, None
    try:
        n = int(number)
    except ValueError:
        return 0, None
    return n, instance.get_run_by_id(run.parent_run_id)


def attempts_text(instance: DagsterInstance, run: DagsterRun, reason: Any) -> str:
    """What a final failure's alert says of its attempts, truthfully: whether it was an
    automatic retry (and why the attempt before it failed), and that Dagster will not
    retry it."""
    n, before = retry_of(instance, run)
    if n and before is not None:
        return (
            f"It was Dagster's automatic retry {n} of run {before.run_id}, which had failed "
            f"({reason(before)}); Dagster will not retry it again."
        )
    return "Dagster will not retry it."
