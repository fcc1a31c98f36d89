"""Error-rate thresholds: measured from real run records, one alert when a job crosses its
threshold, one notice when it is back, single failures folded into the episode between.
The sensors are evaluated against a PostgreSQL-backed instance and what they request is
run through the real send_alert job (audit and outbox)."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    Failure,
    OpExecutionContext,
    build_run_status_sensor_context,
    build_sensor_context,
    job,
    op,
)

from mm_orchestration.monitoring import episodes
from mm_orchestration.monitoring.error_rate import Rate, error_rate_sensor, judge, measure
from mm_orchestration.monitoring.run_alerts import job_failure_sensor, job_recovery_sensor
from mm_orchestration.platform import inventory
from mm_orchestration.platform.inventory import ErrorRate
from tests.monitoring.conftest import send

INVITES = inventory.get("invite-cleanup")


@op(config_schema={"fail": bool, "skip": bool})
def work(context: OpExecutionContext) -> None:
    if context.op_config["fail"]:
        raise Failure("planned failure")
    if context.op_config["skip"]:  # what ledger.report_skip does for a window already done
        context.instance.add_run_tags(context.run_id, {"mm/outcome": "skipped"})


@job
def tiny() -> None:
    work()


def run(instance: DagsterInstance, job_name: str, fail: bool = False, skip: bool = False) -> str:
    result = tiny.execute_in_process(
        instance=instance,
        tags={"mm/job": job_name},
        run_config={"ops": {"work": {"config": {"fail": fail, "skip": skip}}}},
        raise_on_error=False,
    )
    return result.run_id


def run_sensor_on(instance: DagsterInstance, sensor: Any, run_id: str, event: DagsterEventType):
    dagster_run = instance.get_run_by_id(run_id)
    (record,) = instance.all_logs(run_id, of_type=event)
    context = build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=dagster_run,
        dagster_event=record.dagster_event,
    )
    if event == DagsterEventType.RUN_FAILURE:
        context = context.for_run_failure()
    result = sensor(context)
    return result if isinstance(result, list) else [result]


def evaluate(instance: DagsterInstance, resources: dict[str, Any]) -> list[str]:
    with build_sensor_context(instance=instance, resources=resources) as context:
        result = error_rate_sensor(context)
    return send(instance, resources, getattr(result, "run_requests", None))


def audit(conn: Any, job: str = "invite-cleanup") -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT action, details FROM ops.audit_log WHERE job_name = %s ORDER BY id", [job]
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def emails(conn: Any) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT idempotency_key, recipient, payload FROM ops.notification_outbox"
        " WHERE kind = 'alert' ORDER BY id"
    ).fetchall()
    return {r[0]: {"to": r[1], **r[2]} for r in rows}


def test_the_rate_counts_the_jobs_finished_runs_in_its_window(pg_instance) -> None:
    for fail, skip in [(False, False), (False, False), (True, False), (False, True)]:
        run(pg_instance, "invite-cleanup", fail=fail, skip=skip)
    run(pg_instance, "invite-cleanup", fail=True)
    run(pg_instance, "share-link-expiry", fail=True)  # another job's
    canceled = pg_instance.create_run_for_job(
        tiny,
        run_config={"ops": {"work": {"config": {"fail": False, "skip": False}}}},
        tags={"mm/job": "invite-cleanup"},
    )
    pg_instance.report_run_canceled(canceled)

    now = time.time()
    rate = measure(pg_instance, INVITES, now)
    assert rate is not None
    # The skip and the cancellation prove nothing: 2 failed of 4 counted.
    assert (rate.runs, rate.failed) == (4, 2)
    assert rate.percent == 50.0 and not rate.crossed  # 4 runs: fewer than 5 say nothing
    assert [f.reason for f in rate.failures] == ["work: planned failure"] * 2
    run(pg_instance, "invite-cleanup")
    rate = measure(pg_instance, INVITES, time.time())
    assert rate is not None and (rate.runs, rate.failed) == (5, 2) and rate.crossed
    assert rate.summary() == "2 of 5 runs failed in the last 24 hours (40 %)"
    # A day later every run has left the window: no run is no recovery.
    later = measure(pg_instance, INVITES, now + 25 * 3600)
    assert later is not None and (later.runs, later.failed) == (0, 0) and not later.recovered
    # The drill and the weekly report keep their own rules.
    assert measure(pg_instance, inventory.get("backup-verify"), now) is None
    assert measure(pg_instance, inventory.get("residency-report"), now) is None


def test_a_job_failing_every_third_run_alerts_once_and_recovers_once(
    pg_instance, conn, alert_resources
) -> None:
    sent: list[str] = []
    for fail in [False, False, True] * 3:  # the sensor looks after every run
        run_id = run(pg_instance, "invite-cleanup", fail=fail)
        if fail:
            requests = run_sensor_on(
                pg_instance, job_failure_sensor, run_id, DagsterEventType.RUN_FAILURE
            )
            sent += send(pg_instance, alert_resources, requests)
        sent += evaluate(pg_instance, alert_resources)
    for _ in range(11):
        run(pg_instance, "invite-cleanup")
    sent += evaluate(pg_instance, alert_resources)
    # 3 of 20 (15 %): below the threshold, above the recovery line: still open.
    actions = [a for a, _ in audit(conn)]
    assert actions.count("job_error_rate_alert") == 1
    assert "job_error_rate_recovered" not in actions
    for _ in range(10):  # 3 of 30: 10 %, back at the recovery line
        run(pg_instance, "invite-cleanup")
    sent += evaluate(pg_instance, alert_resources)
    sent += evaluate(pg_instance, alert_resources)  # nothing more is owed

    entries = audit(conn)
    actions = [a for a, _ in entries]
    # The third run's failure is emailed; the sixth crosses the line (2 of 6) and is
    # folded into the episode's alert, as is the ninth; one notice when it is over.
    assert actions == [
        "job_failure_alert",
        "alert_folded",
        "job_error_rate_alert",
        "alert_folded",
        "job_error_rate_recovered",
    ]
    mail = emails(conn)
    opened = next(m for k, m in mail.items() if k.endswith(":opened"))
    assert opened["subject"] == (
        "invite-cleanup is failing too often: 2 of 6 runs in 24 hours (33 %)"
    )
    assert opened["to"] == "reliability@motionmavericks.com.au"
    assert "at most 20 % failed, counted from 5 runs" in opened["body"]
    assert opened["body"].count("work: planned failure") == 2  # the last failures, each
    closed = next(m for k, m in mail.items() if k.endswith(":closed"))
    assert closed["subject"] == "invite-cleanup recovered: 3 of 30 runs failed in 24 hours"
    assert "2 failure(s) in that time were folded" in closed["body"]
    assert len(mail) == 3  # one failure email, the alert and the notice
    # Each alert's send_alert run ran once: the sensor asked again only while it was owed.
    assert len(sent) == len(set(sent))


def test_inside_an_episode_streaks_and_their_recovery_are_folded_too(
    pg_instance, conn, alert_resources
) -> None:
    for _ in range(5):
        run_id = run(pg_instance, "invite-cleanup", fail=True)
        requests = run_sensor_on(
            pg_instance, job_failure_sensor, run_id, DagsterEventType.RUN_FAILURE
        )
        send(pg_instance, alert_resources, requests)
    fixed = run(pg_instance, "invite-cleanup")
    requests = run_sensor_on(pg_instance, job_recovery_sensor, fixed, DagsterEventType.RUN_SUCCESS)
    send(pg_instance, alert_resources, requests)
    evaluate(pg_instance, alert_resources)

    actions = [a for a, _ in audit(conn)]
    # Two failures and their streak before the fifth run crossed the line (5 of 5); the
    # third and fourth failures are folded into the streak's alert, the fifth and the
    # streak's recovery notice into the episode, whose own alert goes once.
    assert actions == [
        "job_failure_alert",
        "job_failure_alert",
        "job_consecutive_failures",
        "alert_folded",
        "alert_folded",
        "alert_folded",
        "alert_folded",
        "job_error_rate_alert",
    ]
    folded = [d for a, d in audit(conn) if a == "alert_folded"]
    assert [d["alert"] for d in folded] == ["job_failure_alert"] * 3 + ["job_recovery"]
    assert [d["folded_into"].split(":")[0] for d in folded] == [
        "job-streak",
        "job-streak",
        "alert-episode",
        "alert-episode",
    ]


def _rate(runs: int, failed: int) -> Rate:
    return Rate("invite-cleanup", ErrorRate(), runs, failed, ())


def test_a_rate_hovering_at_the_threshold_is_one_episode(conn) -> None:
    """21 %, 19 %, 22 %, 18 %...: crossing the line each other run is one episode, closed
    only at the recovery line (half the threshold)."""
    now = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    opened = closed = 0
    for i, (runs, failed) in enumerate(
        [(19, 4), (21, 4), (18, 4), (22, 4), (21, 4), (40, 5), (40, 4), (41, 5)]
    ):
        changed = judge(conn, INVITES, _rate(runs, failed), now + 60 * i)
        if changed is not None:
            opened += changed.closed_at is None
            closed += changed.closed_at is not None
    assert (opened, closed) == (1, 1)
    # The second crossing after the close is a new episode: a new alert is owed.
    judge(conn, INVITES, _rate(20, 5), now + 3600)
    owed = episodes.unsent(conn, "error_rate", datetime.fromtimestamp(now + 3600, UTC))
    assert [(e.subject, event) for e, event in owed] == [
        ("invite-cleanup", "opened"),
        ("invite-cleanup", "closed"),
        ("invite-cleanup", "opened"),
    ]
    # Owed alerts older than a day are not sent at all.
    later = datetime.fromtimestamp(now + 3600, UTC) + timedelta(days=1, minutes=1)
    assert episodes.unsent(conn, "error_rate", later) == []


def test_a_job_without_enough_runs_never_crosses(conn) -> None:
    now = time.time()
    assert judge(conn, INVITES, _rate(4, 4), now) is None  # 100 %, but 4 runs
    assert episodes.current(conn, "error_rate", "invite-cleanup") is None


def test_the_dashboard_shows_each_threshold_the_rate_and_the_open_alerts(
    pg_instance, conn, portal_db
) -> None:
    from dagster import materialize

    from mm_orchestration.monitoring.job_health import job_health
    from mm_orchestration.platform.job_settings import JobSettings

    for fail in (True, True, False, False, False):
        run(pg_instance, "invite-cleanup", fail=fail)
    rate = measure(pg_instance, INVITES, time.time())
    assert rate is not None
    judge(conn, INVITES, rate, time.time())  # 2 of 5: open
    result = materialize(
        [job_health],
        instance=pg_instance,
        resources={"portal_db": portal_db, "job_settings": JobSettings()},
    )
    (mat,) = result.asset_materializations_for_node("ops__job_health")
    rows = {(r.data["job"], r.data["window"]): r.data for r in mat.metadata["jobs"].records}
    invites = rows[("invite-cleanup", "24h")]
    assert (invites["failed_pct"], invites["error_rate_alert"]) == (
        40.0,
        "<=20% failed/24h (>=5 runs)",
    )
    assert rows[("backup-verify", "24h")]["error_rate_alert"] == "its own rules"
    assert rows[("tenant-health-check", "7d")]["error_rate_alert"] == "<=20% failed/7d (>=5 runs)"
    assert mat.metadata["alert_episodes_open"].value == 1
    assert "| error\\_rate | invite-cleanup | reliability |" in mat.metadata["open_alerts"].value
