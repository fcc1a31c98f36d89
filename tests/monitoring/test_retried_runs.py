"""Which failures alert and count: a failed attempt Dagster retries is not final (its retry
is), and a request the run coordinator refused is never retried and alerts only when no
person asked for it. Runs of a tiny job tagged as invite-cleanup, executed in this process
against a PostgreSQL instance with the project's dagster.yaml (run retries on, the run
coordinator ours), each with a code location origin as the daemon's and the console's runs
have; Dagster itself decides `dagster/will_retry` as it stores each failure."""

import time
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Failure,
    OpExecutionContext,
    RunRequest,
    SkipReason,
    StringSource,
    SubmitRunContext,
    build_run_status_sensor_context,
    job,
    op,
    reconstructable,
)
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)

from mm_orchestration.monitoring.error_rate import measure
from mm_orchestration.monitoring.job_health import collect
from mm_orchestration.monitoring.run_alerts import job_failure_sensor, job_recovery_sensor
from mm_orchestration.monitoring.sentry_sensors import (
    sentry_run_failed_sensor,
    sentry_run_succeeded_sensor,
)
from mm_orchestration.platform import inventory
from tests.monitoring.test_sentry import sensor_run
from tests.monitoring.test_sentry import sentry as sentry  # the fixture

INVITES = inventory.get("invite-cleanup")
ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(
        GrpcServerCodeLocationOrigin(host="localhost", port=4266, location_name="mm_orchestration"),
        "__repository__",
    ),
    "attempted",
)


@op(config_schema={"fail": bool, "note": StringSource})
def attempt(context: OpExecutionContext) -> None:
    if context.op_config["fail"]:
        raise Failure("planned failure")


@job
def attempted() -> None:
    attempt()


def run(
    instance: DagsterInstance,
    fail: bool,
    tags: dict[str, str] | None = None,
    retry_of: str | None = None,
    note: Any = "plain",
) -> str:
    """One run of `attempted` as invite-cleanup, from a code location (ORIGIN); a process
    death is what run retries retry, so the attempt's step failure is made retryable
    (`dagster/retry_on_asset_or_op_failure`). `retry_of`: Dagster's automatic retry 1 of
    that run. `note` may read the environment (the run coordinator refuses it); then the
    run is submitted, not executed."""
    all_tags = {"mm/job": INVITES.name, "dagster/retry_on_asset_or_op_failure": "true"}
    if retry_of:  # as Dagster's daemon makes it (create_reexecuted_run)
        all_tags |= {"dagster/retry_number": "1", "dagster/parent_run_id": retry_of,
                     "dagster/root_run_id": retry_of}  # fmt: skip
    created = instance.create_run_for_job(
        attempted,
        run_config={"ops": {"attempt": {"config": {"fail": fail, "note": note}}}},
        tags={**all_tags, **(tags or {})},
        remote_job_origin=ORIGIN,
        parent_run_id=retry_of,
        root_run_id=retry_of,
    )
    if note != "plain":
        context = SubmitRunContext(created, workspace=None)  # type: ignore[arg-type]
        instance.run_coordinator.submit_run(context)  # what dagster job launch reaches
    else:
        execute_run(reconstructable(attempted), created, instance)
    return created.run_id


def sensed(instance: DagsterInstance, sensor: Any, run_id: str) -> Any:
    found = instance.get_run_by_id(run_id)
    assert found is not None
    kind = (
        DagsterEventType.RUN_SUCCESS
        if found.status == DagsterRunStatus.SUCCESS
        else DagsterEventType.RUN_FAILURE
    )
    (record,) = instance.all_logs(run_id, of_type=kind)
    context = build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=found,
        dagster_event=record.dagster_event,
    )
    return sensor(context.for_run_failure() if kind == DagsterEventType.RUN_FAILURE else context)


def test_a_failure_dagster_retries_alerts_nobody_and_its_retry_is_the_run(pg_instance):
    """The trial killed a run worker: the attempt's failure alert said "failed after its
    retries" while its retry went on to succeed. The attempt (`dagster/will_retry: true`)
    alerts nobody; its retry is the run: a success closes nothing and counts one run, a
    failure alerts once, saying it was the retry of which run and why that one failed."""
    instance = pg_instance
    first = run(instance, fail=True)
    assert instance.get_run_by_id(first).tags["dagster/will_retry"] == "true"  # type: ignore[union-attr]
    quiet = sensed(instance, job_failure_sensor, first)
    assert isinstance(quiet, SkipReason) and "Dagster retries it" in (quiet.skip_message or "")
    retried = run(instance, fail=False, retry_of=first)
    assert isinstance(sensed(instance, job_recovery_sensor, retried), SkipReason)
    rate = measure(instance, INVITES, time.time())
    assert rate is not None and (rate.runs, rate.failed) == (1, 0)  # one logical run

    second = run(instance, fail=True)
    assert isinstance(sensed(instance, job_failure_sensor, second), SkipReason)
    final = run(instance, fail=True, retry_of=second)
    assert instance.get_run_by_id(final).tags["dagster/will_retry"] == "false"  # type: ignore[union-attr]
    requests = sensed(instance, job_failure_sensor, final)
    # One failure alert, and no streak: the attempt and its retry are one failed run.
    assert [r.run_key for r in requests] == [f"job-failed:{final}"]
    body = requests[0].run_config["ops"]["record_alert"]["config"]["body"]
    assert "after its retries" not in body
    assert (
        f"It was Dagster's automatic retry 1 of run {second}, which had failed "
        "(attempt: planned failure); Dagster will not retry it again." in body
    )
    rate = measure(instance, INVITES, time.time())
    assert rate is not None and (rate.runs, rate.failed) == (2, 1)
    (day, _) = collect(instance, [INVITES]).windows
    assert {k: day.counts[k] for k in ("succeeded", "failed", "retried")} == {
        "succeeded": 1,
        "failed": 1,
        "retried": 2,
    }


def test_a_refused_request_is_not_retried_and_alerts_only_when_no_person_asked(pg_instance):
    """`dagster job launch` of a run the coordinator refuses: Dagster retried it (refused
    again) and each attempt alerted. A refused run is never retried (`dagster/max_retries`
    0: Dagster's daemon reads will_retry false); a person's is answered to them (its
    log, the run list), not alerted nor counted; a schedule's has nobody to tell: it
    alerts the job's owner, saying it was refused and not retried, and counts."""
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    instance = pg_instance
    reads = {"env": "HOME"}
    asked = run(instance, fail=False, note=reads)
    refused = instance.get_run_by_id(asked)
    assert refused is not None and refused.status == DagsterRunStatus.FAILURE
    assert refused.tags["dagster/will_retry"] == "false"
    assert (refused.tags["dagster/max_retries"], refused.tags["mm/refused"]) == ("0", asked)
    assert not should_retry(refused, instance)
    quiet = sensed(instance, job_failure_sensor, asked)
    assert isinstance(quiet, SkipReason) and "no alert" in (quiet.skip_message or "")

    scheduled = run(instance, fail=False, note=reads, tags={"dagster/schedule_name": "x"})
    requests = sensed(instance, job_failure_sensor, scheduled)
    assert isinstance(requests, list) and isinstance(requests[0], RunRequest)
    body = requests[0].run_config["ops"]["record_alert"]["config"]["body"]
    assert "was refused before it was queued" in body and "not retried" in body
    rate = measure(instance, INVITES, time.time())
    assert rate is not None and (rate.runs, rate.failed) == (1, 1)  # the schedule's only
    (day, _) = collect(instance, [INVITES]).windows
    assert (day.counts["refused"], day.counts["failed"]) == (1, 1)


def test_a_retried_attempt_sends_sentry_no_error_check_in(pg_instance, sentry):
    """Sentry Crons heard "error" from the killed worker's attempt as well: a scheduled
    attempt Dagster retries checks in nothing; its retry says how the scheduled run ended."""
    monitoring, capture = sentry
    instance = pg_instance
    scheduled = {"dagster/schedule_name": "invite_cleanup_schedule"}
    first = run(instance, fail=True, tags=scheduled)
    retried = run(instance, fail=False, tags=scheduled, retry_of=first)
    for run_id, sensor in (
        (first, sentry_run_failed_sensor),
        (retried, sentry_run_succeeded_sensor),
    ):
        found = instance.get_run_by_id(run_id)
        kind = DagsterEventType.RUN_FAILURE if run_id == first else DagsterEventType.RUN_SUCCESS
        sensor_run(sensor, instance, found, kind, monitoring)
    monitoring.flush()
    assert [c["status"] for c in capture.of("check_in")] == ["ok"]
    assert len(capture.of("transaction")) == 2  # each attempt is still traced
