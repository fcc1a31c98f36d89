"""Run alerts and the manual-run audit, for every job, through the one alert path.

- `job_failure_sensor`: a run that failed for good (after its op retries, and the final
  attempt: a run Dagster will retry, `dagster/will_retry`, is not; its retry is) requests
  one `send_alert` run to the job's escalation target from the inventory; when it is the
  Nth failure in a row (the inventory's `consecutive_failures_alert`, default 2) it
  also requests one "consecutive failures" alert for the streak. A person's request the
  run coordinator refused is answered to that person, not alerted (monitoring/attempts.py);
  attempts retried and refused requests are left out of streaks too.
- `job_recovery_sensor`: the first success after such a streak sends one recovery notice.
- Once a streak is announced, its later failures are folded into that alert (`send_alert`
  finds it in the audit log, `alerts.announced_streak`): an every-minute job failing
  through an outage is one failure, one streak and one recovery email, not one a minute
  until its error rate crosses its threshold hours later.
- While the job's error rate is above its threshold (an open `error_rate` episode,
  monitoring.error_rate), these three are folded into the episode instead of being sent:
  `send_alert` decides, in the transaction that would queue the email.
- `manual_run_audit_sensor`: reconciliation only. The console and `mm-jobs run` audit a
  launch at the moment it is asked for, with the person (mm_orchestration.console.middleware,
  cli.cmd_run); a run that no schedule, sensor or backfill started and that no audit entry
  names (launched around them, e.g. straight into the instance) gets a `manual_run` entry
  saying it was found afterwards, with the `mm/actor` tag if any ('unknown' otherwise).

Alerts about `send_alert` itself are never requested, so alerting cannot loop.
"""

from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SkipReason,
)

from mm_orchestration.monitoring import attempts
from mm_orchestration.monitoring.alerts import alert_request, send_alert
from mm_orchestration.monitoring.every_run import every_run_sensor
from mm_orchestration.monitoring.run_status import ERROR_TAG, failure_summary, tag_failure
from mm_orchestration.platform.audit import masked, record_once_per_run
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.ledger import ACTOR_TAG, OUTCOME_TAG
from mm_orchestration.platform.scheduling import spec_for_run
from mm_orchestration.platform.text import one_line

FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]


def _walk_back(instance: DagsterInstance, run: DagsterRun, limit: int) -> tuple[list[str], float]:
    """The unbroken run of failures of `run`'s job just before `run` (run ids, newest first),
    and when the success that ended the run before them ended (epoch seconds; 0 when none
    is among the job's last `limit` finished runs). Skipped runs prove nothing either way."""
    records = instance.get_run_records(
        filters=RunsFilter(job_name=run.job_name, statuses=FINISHED), limit=limit
    )
    ids = [record.dagster_run.run_id for record in records]  # newest first
    earlier = records[ids.index(run.run_id) + 1 :] if run.run_id in ids else []
    streak: list[str] = []
    for record in earlier:
        other = record.dagster_run
        if other.tags.get(OUTCOME_TAG) == "skipped":
            continue  # a run that found its window done proves nothing either way
        if not attempts.counts(other):
            continue  # an attempt its retry answers for, or a request refused: no run
        if other.status != DagsterRunStatus.FAILURE:
            return streak, record.end_time or record.create_timestamp.timestamp()
        streak.append(other.run_id)
    return streak, 0.0


def failures_before(instance: DagsterInstance, run: DagsterRun, limit: int = 50) -> list[str]:
    """Run ids of the unbroken run of failures of `run`'s job just before `run`, newest first."""
    return _walk_back(instance, run, limit)[0]


def failure_streak(instance: DagsterInstance, run: DagsterRun) -> tuple[list[str], float]:
    """Run ids of the consecutive failures ending with (and including) the failed `run`, and
    when the job's success before them ended (0 when not among its last 50 finished runs)."""
    before, since = _walk_back(instance, run, 50)
    return [run.run_id, *before], since


def _alert(
    key: str,
    contact: str,
    subject: str,
    body: str,
    action: str,
    job: str,
    details: dict[str, Any],
    failed_run: str = "",
    streak_since: float | None = None,
) -> RunRequest:
    return alert_request(
        key, contact, subject, body, action, job, details, tag=action,
        fold_into="error_rate", failed_run=failed_run, streak_since=streak_since,
    )  # fmt: skip


# Every 10 s rather than Dagster's 30: a failure should reach its owner within a minute.
@every_run_sensor(
    "job_failure_sensor",
    DagsterRunStatus.FAILURE,
    request_job=send_alert,
    minimum_interval_seconds=10,
)
def job_failure_sensor(context: RunStatusSensorContext) -> list[RunRequest] | SkipReason:
    instance = context.instance
    run = attempts.settled(instance, context.dagster_run)
    # Every failed run shows its one-line reason in the run list, inventory job or not.
    message = failure_summary(instance, run.run_id)
    tag_failure(instance, run.run_id, message)
    spec = spec_for_run(run)
    if run.job_name == send_alert.name or spec is None:
        return SkipReason(f"{run.job_name} is not an inventory job: no alert")
    if attempts.will_be_retried(run):
        return SkipReason(
            f"{spec.name} run {run.run_id[:8]} failed and Dagster retries it: its retry, the "
            "final attempt, is the one that alerts if it fails"
        )
    if attempts.refused_request(run):
        return SkipReason(
            f"{spec.name} run {run.run_id[:8]} was refused before it was queued, at the "
            "request of a person, who is answered by the run itself (its log and mm/error): "
            "no alert"
        )
    # A run launched by a person (console, `mm-jobs run`): the alert says who.
    actor = run.tags.get(ACTOR_TAG)
    launched = f"\n\nLaunched by {actor}." if actor else ""
    streak, since = failure_streak(instance, run)
    # Past the failure that announced the streak, this one is folded into its alert.
    announced = len(streak) > spec.consecutive_failures_alert
    if attempts.refused(run):
        what = (
            f"The {spec.name} run {run.run_id} was refused before it was queued (nothing of "
            "the job ran), and it is not retried: it would be refused again. No person asked "
            "for it: fix what requested it (its schedule or sensor)."
        )
    else:
        what = (
            f"The {spec.name} run {run.run_id} failed{_step_retries(instance, run)}. "
            + attempts.attempts_text(instance, run, lambda r: _reason_of(instance, r))
        )
    requests = [
        _alert(
            f"job-failed:{run.run_id}",
            spec.escalate_to,
            f"{spec.name} failed: {one_line(message, 90)}",
            f"{message}\n\n{what}\n\n"
            f"What it does: {spec.purpose}. Failure handling: {spec.failure_handling}.\n"
            f"Open the run in the job console, fix the cause, then rerun it "
            f"(`mm-jobs run {spec.name}`).{launched}",
            "job_failure_alert",
            spec.name,
            {"run_id": run.run_id, "actor": actor},
            failed_run=run.run_id,
            streak_since=since if announced else None,
        )
    ]
    if len(streak) == spec.consecutive_failures_alert:
        first = streak[-1]
        requests.append(
            _alert(
                f"job-streak:{spec.name}:{first}",
                spec.escalate_to,
                f"{spec.name} has failed {len(streak)} runs in a row",
                f"{spec.name} has failed {len(streak)} consecutive runs (since run {first}). "
                "One notice is sent per streak; the first success after it sends a recovery.",
                "job_consecutive_failures",
                spec.name,
                {"runs": streak},
                failed_run=run.run_id,
            )
        )
    return requests


def _step_retries(instance: DagsterInstance, run: DagsterRun) -> str:
    """Says ", after N retries of its steps" when its steps were retried (their policy),
    else nothing: said only when it happened."""
    retried = len(instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY))
    if not retried:
        return ""
    return f", after {retried} {'retry' if retried == 1 else 'retries'} of its steps"


def _reason_of(instance: DagsterInstance, run: DagsterRun) -> str:
    """A failed run's one-line reason (the failure sensor's mm/error tag, else its log)."""
    return one_line(run.tags.get(ERROR_TAG) or failure_summary(instance, run.run_id), 200)


@every_run_sensor(
    "job_recovery_sensor",
    DagsterRunStatus.SUCCESS,
    request_job=send_alert,
    minimum_interval_seconds=10,
)
def job_recovery_sensor(context: RunStatusSensorContext) -> RunRequest | SkipReason:
    run = context.dagster_run
    spec = spec_for_run(run)
    if run.job_name == send_alert.name or spec is None:
        return SkipReason(f"{run.job_name} is not an inventory job")
    if run.tags.get(OUTCOME_TAG) == "skipped":
        return SkipReason(f"{spec.name} run {run.run_id[:8]} was skipped: it proves no recovery")
    streak = len(failures_before(context.instance, run))
    if streak < spec.consecutive_failures_alert:
        return SkipReason(f"{spec.name} succeeded after {streak} failure(s): no streak to close")
    return _alert(
        f"job-recovered:{spec.name}:{run.run_id}",
        spec.escalate_to,
        f"{spec.name} recovered",
        f"{spec.name} succeeded (run {run.run_id}) after {streak} consecutive failures.",
        "job_recovery",
        spec.name,
        {"run_id": run.run_id, "failures": streak},
    )


def is_manual(run: DagsterRun) -> bool:
    """Neither a schedule, a sensor nor a backfill started it."""
    tags = run.tags
    return not any(
        key in tags for key in ("dagster/schedule_name", "dagster/sensor_name", "dagster/backfill")
    )


def audit_manual_run(portal_db: PortalDatabase, run: DagsterRun) -> bool:
    """An entry for a manual run that has none; returns whether this call wrote it."""
    details = {
        "config": masked(run.run_config),
        "reconciled": "no entry was written when this run was launched",
        "trigger": run.tags.get("mm/trigger", "unknown"),
        "tags": {k: v for k, v in run.tags.items() if k.startswith("mm/")},
    }
    spec = spec_for_run(run)
    job = spec.name if spec else run.job_name
    with portal_db.connection() as conn:
        # Only a run no entry names yet: the console's and the CLI's entries carry its id.
        return record_once_per_run(
            conn,
            run.tags.get(ACTOR_TAG) or "unknown",
            "manual_run",
            job,
            run.run_id,
            details,
            target=job,
            outcome="reconciled",
        )


@every_run_sensor("manual_run_audit_sensor", DagsterRunStatus.STARTED, minimum_interval_seconds=10)
def manual_run_audit_sensor(
    context: RunStatusSensorContext, portal_db: PortalDatabase
) -> SkipReason:
    run = context.dagster_run
    if not is_manual(run):
        return SkipReason(f"run {run.run_id[:8]} was started by a schedule, sensor or backfill")
    wrote = audit_manual_run(portal_db, run)
    actor = run.tags.get(ACTOR_TAG) or "unknown"
    return SkipReason(
        f"run {run.run_id[:8]} of {run.job_name} (by {actor}) had no audit entry: reconciled"
        if wrote
        else f"run {run.run_id[:8]} was audited when it was launched"
    )
