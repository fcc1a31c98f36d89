"""A job failing every run of an outage, below its error-rate threshold (a busy job's
24-hour rate crosses only hours in): one failure email, one streak alert, then its
failures are folded into the streak until the recovery notice; a new streak starts over."""

from __future__ import annotations

from dagster import DagsterEventType

from mm_orchestration.monitoring.run_alerts import job_failure_sensor, job_recovery_sensor
from tests.monitoring.conftest import send
from tests.monitoring.test_error_rate import audit, emails, evaluate, run, run_sensor_on


def fail_and_alert(instance, resources) -> str:
    run_id = run(instance, "invite-cleanup", fail=True)
    send(
        instance,
        resources,
        run_sensor_on(instance, job_failure_sensor, run_id, DagsterEventType.RUN_FAILURE),
    )
    return run_id


def test_an_announced_streak_folds_its_later_failures(pg_instance, conn, alert_resources):
    for _ in range(30):  # a healthy history: 6 failures of 36 runs stay under 20 %
        run(pg_instance, "invite-cleanup")
    failed = [fail_and_alert(pg_instance, alert_resources) for _ in range(6)]
    assert evaluate(pg_instance, alert_resources) == []  # no error-rate episode

    actions = [a for a, _ in audit(conn)]
    assert actions == [
        "job_failure_alert",
        "job_failure_alert",
        "job_consecutive_failures",
        *["alert_folded"] * 4,
    ]
    folded = [d for a, d in audit(conn) if a == "alert_folded"]
    assert {d["folded_into"] for d in folded} == {f"job-streak:invite-cleanup:{failed[0]}"}
    assert [d["run_id"] for d in folded] == failed[2:]
    assert len(emails(conn)) == 3

    fixed = run(pg_instance, "invite-cleanup")  # the recovery is said, not folded
    send(
        pg_instance,
        alert_resources,
        run_sensor_on(pg_instance, job_recovery_sensor, fixed, DagsterEventType.RUN_SUCCESS),
    )
    assert [a for a, _ in audit(conn)][-1] == "job_recovery"
    again = fail_and_alert(pg_instance, alert_resources)  # a new streak: said again
    assert f"job-failed:{again}" in emails(conn)
