"""Sentry: every run as a transaction with a span per op, failures as events, Crons check-ins.

Dagster catches op exceptions, so instead of wrapping every op these run-status
sensors read what the run recorded (its steps' start and end, its failures) and
report it: a failed run becomes a Sentry event per failed op, tagged with jobName,
runId and tenantId where the error names one; every finished run becomes a
transaction with one span per op, timed from the event log; a scheduled run sends
Crons check-ins (in progress when it starts, ok or error when it ends) carrying its
schedule, time zone, margin and maximum runtime, so Sentry notices when no run
happens at all; a failed attempt Dagster retries checks in nothing, its retry ends the
scheduled run. With no SENTRY_DSN nothing is initialised and nothing is sent.
"""

import re
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunStatusSensorContext,
    SkipReason,
)

from mm_orchestration.monitoring import attempts
from mm_orchestration.monitoring.every_run import every_run_sensor
from mm_orchestration.monitoring.resource import Monitoring
from mm_orchestration.platform import inventory
from mm_orchestration.platform.ledger import ACTOR_TAG
from mm_orchestration.platform.scheduling import spec_for_run

_TENANT = re.compile(r"tenant[_ ]?id[\"'=: ]+([0-9a-f-]{36})", re.IGNORECASE)


def monitor_config(spec: inventory.JobSpec, monitoring: Monitoring) -> Any:
    """What Sentry Crons needs to notice a missed or overlong run."""
    cron = monitoring.crons.get(spec.name) or spec.cron_for(monitoring.environment)
    return {
        "schedule": {"type": "crontab", "value": cron},
        "timezone": monitoring.timezone,
        # Minutes late before a check-in counts as missed: the inventory's tick margin, as
        # schedule_tick_sensor's (monitoring/ticks.py).
        "checkin_margin": max(1, spec.tick_margin_seconds // 60),
        "max_runtime": max(1, spec.max_runtime_seconds // 60),
    }


def _steps(instance: DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    """Each op's start and end (and error) from the run's event log."""
    steps: dict[str, dict[str, Any]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        step = steps.setdefault(event.step_key, {"op": event.step_key})
        if event.event_type == DagsterEventType.STEP_START:
            step.setdefault("start", record.timestamp)
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            step["end"] = record.timestamp
            step["status"] = "ok" if event.is_step_success else "internal_error"
            if event.is_step_failure:
                error = getattr(event.event_specific_data, "error", None)
                step["error"] = error.to_string() if error is not None else event.message
    return list(steps.values())


def report_run(monitoring: Monitoring, instance: DagsterInstance, run: DagsterRun) -> int:
    """Send the finished run's transaction and failures. Returns the events sent."""
    if not monitoring.start():
        return 0
    import sentry_sdk  # started above: a deployment without Sentry never loads it

    spec = spec_for_run(run)
    job_name = spec.name if spec else run.job_name
    steps = _steps(instance, run.run_id)
    record = instance.get_run_record_by_id(run.run_id)
    start = (record.start_time if record and record.start_time else None) or min(
        (s["start"] for s in steps if "start" in s), default=None
    )
    end = (record.end_time if record and record.end_time else None) or max(
        (s["end"] for s in steps if "end" in s), default=start
    )
    sent = 0
    # Who launched it by hand (the console's signed-in person, `mm-jobs run`'s user).
    actor = run.tags.get(ACTOR_TAG)
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("jobName", job_name)
        scope.set_tag("runId", run.run_id)
        if actor:
            scope.set_tag("actor", actor)
        transaction = sentry_sdk.start_transaction(
            op="dagster.run", name=job_name, start_timestamp=start, sampled=True
        )
        transaction.set_tag("jobName", job_name)
        transaction.set_tag("runId", run.run_id)
        if actor:
            transaction.set_tag("actor", actor)
        for step in steps:
            if "start" not in step:
                continue
            span = transaction.start_child(
                op="dagster.op", name=step["op"], start_timestamp=step["start"]
            )
            span.set_status(step.get("status", "ok"))
            span.finish(end_timestamp=step.get("end", end))
            if "error" in step:
                with sentry_sdk.new_scope() as failure:
                    failure.set_tag("jobName", job_name)
                    failure.set_tag("runId", run.run_id)
                    failure.set_tag("op", step["op"])
                    if actor:
                        failure.set_tag("actor", actor)
                    tenant = _TENANT.search(step["error"])
                    if tenant:
                        failure.set_tag("tenantId", tenant.group(1))
                    sentry_sdk.capture_message(
                        f"{job_name} failed in {step['op']}: {step['error'].splitlines()[0]}",
                        level="error",
                    )
                    sent += 1
        transaction.set_status("ok" if run.status == DagsterRunStatus.SUCCESS else "internal_error")
        transaction.finish(end_timestamp=end)
        sent += 1
    # A failed attempt Dagster retries sends no check-in: its retry (which inherits the
    # schedule's tag, and checks in as it starts) ends the scheduled run, ok or error.
    if (
        spec is not None
        and "dagster/schedule_name" in run.tags
        and not attempts.will_be_retried(run)
    ):
        sentry_sdk.crons.capture_checkin(
            monitor_slug=spec.name,
            status="ok" if run.status == DagsterRunStatus.SUCCESS else "error",
            duration=(end - start) if start and end else None,
            monitor_config=monitor_config(spec, monitoring),
        )
        sent += 1
    monitoring.flush()
    return sent


@every_run_sensor("sentry_run_started_sensor", DagsterRunStatus.STARTED)
def sentry_run_started_sensor(
    context: RunStatusSensorContext, monitoring: Monitoring
) -> SkipReason:
    """A scheduled run has started: an in-progress Crons check-in."""
    run = context.dagster_run
    spec = spec_for_run(run)
    if spec is None or "dagster/schedule_name" not in run.tags:
        return SkipReason("not a scheduled inventory run: no check-in")
    if not monitoring.start():
        return SkipReason("SENTRY_DSN is not set: nothing sent")
    import sentry_sdk  # started above: a deployment without Sentry never loads it

    sentry_sdk.crons.capture_checkin(
        monitor_slug=spec.name,
        status="in_progress",
        monitor_config=monitor_config(spec, monitoring),
    )
    monitoring.flush()
    return SkipReason(f"in-progress check-in sent for {spec.name}")


def _finished(context: RunStatusSensorContext, monitoring: Monitoring) -> SkipReason:
    sent = report_run(monitoring, context.instance, context.dagster_run)
    return SkipReason(
        f"sent {sent} Sentry item(s) for run {context.dagster_run.run_id[:8]}"
        if sent
        else "SENTRY_DSN is not set: nothing sent"
    )


@every_run_sensor("sentry_run_succeeded_sensor", DagsterRunStatus.SUCCESS)
def sentry_run_succeeded_sensor(
    context: RunStatusSensorContext, monitoring: Monitoring
) -> SkipReason:
    """A finished run: its transaction (and the schedule's ok check-in)."""
    return _finished(context, monitoring)


@every_run_sensor("sentry_run_failed_sensor", DagsterRunStatus.FAILURE)
def sentry_run_failed_sensor(context: RunStatusSensorContext, monitoring: Monitoring) -> SkipReason:
    """A failed run: an event per failed op with its tags, the transaction, the error
    check-in (none for an attempt Dagster retries: monitoring/attempts.py)."""
    run = attempts.settled(context.instance, context.dagster_run)
    sent = report_run(monitoring, context.instance, run)
    return SkipReason(
        f"sent {sent} Sentry item(s) for run {run.run_id[:8]}"
        if sent
        else "SENTRY_DSN is not set: nothing sent"
    )
