"""A job whose every run is slow alerts once per slow stretch, not once per run (it
alerted every run: share-link expiry on a slow database, 96 emails a day)."""

import time
from typing import Any

from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    build_sensor_context,
    job,
    op,
)

from mm_orchestration.monitoring.sla import sla_sensor, slow_stretch
from mm_orchestration.platform import audit
from tests.monitoring.conftest import send

JOB = "share-link-expiry"  # its SLA: 60 s


@op
def nothing() -> None:
    pass


@job
def tiny() -> None:
    nothing()


def run(instance: DagsterInstance, start: float, end: float | None) -> str:
    """A run of the job that started at `start` and ended at `end` (None: still going)."""
    run_id = instance.create_run_for_job(tiny, tags={"mm/job": JOB}).run_id
    for kind, at in ((DagsterEventType.RUN_START, start), (DagsterEventType.RUN_SUCCESS, end)):
        if at is not None:
            instance.report_dagster_event(
                DagsterEvent(event_type_value=kind.value, job_name="tiny"), run_id, timestamp=at
            )
    return run_id


def alerted(conn: Any, run_id: str) -> None:
    """What send_alert records for an SLA alert about `run_id`."""
    audit.record(conn, "alerting", "job_sla_alert", JOB, None, {"run_id": run_id})


def test_slow_runs_belong_to_the_stretch_of_the_last_alert_until_it_settles(
    pg_instance, conn
) -> None:
    t = time.time() - 7200
    first = run(pg_instance, t, t + 70)  # slow: alerted
    assert slow_stretch(pg_instance, conn, JOB, first) is None  # nothing alerted yet
    alerted(conn, first)
    # The next run is slow too, five minutes later: the same stretch.
    second = run(pg_instance, t + 300, None)
    assert slow_stretch(pg_instance, conn, JOB, second) == first
    # A fast run between is not enough on its own: the stretch has not settled.
    run(pg_instance, t + 200, t + 230)
    assert slow_stretch(pg_instance, conn, JOB, second) == first
    # Fast runs for 15 minutes after the last slow one: a new slow run is a new stretch.
    third = run(pg_instance, t + 70 + 900, None)
    assert slow_stretch(pg_instance, conn, JOB, third) is None


def test_an_alerted_run_still_going_keeps_its_stretch_open(pg_instance, conn) -> None:
    t = time.time() - 3600
    first = run(pg_instance, t, None)
    alerted(conn, first)
    later = run(pg_instance, t + 3000, None)
    assert slow_stretch(pg_instance, conn, JOB, later) == first


def test_two_slow_runs_in_a_row_send_one_sla_email(
    pg_instance, conn, alert_resources, monkeypatch
) -> None:
    now = time.time()
    run(pg_instance, now - 200, now - 100)  # 100 s, finished: an earlier slow run
    slow = run(pg_instance, now - 90, None)
    monkeypatch.setattr("mm_orchestration.monitoring.sla.time.time", lambda: now)
    with build_sensor_context(instance=pg_instance) as context:
        send(pg_instance, alert_resources, sla_sensor(context).run_requests)
    # The next run is slow as well.
    pg_instance.report_dagster_event(
        DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name="tiny"),
        slow,
        timestamp=now + 10,
    )
    run(pg_instance, now + 20, None)
    monkeypatch.setattr("mm_orchestration.monitoring.sla.time.time", lambda: now + 100)
    with build_sensor_context(instance=pg_instance) as context:
        send(pg_instance, alert_resources, sla_sensor(context).run_requests)
    actions = [
        r[0]
        for r in conn.execute(
            "SELECT action FROM ops.audit_log WHERE job_name = %s ORDER BY id", [JOB]
        ).fetchall()
    ]
    assert actions == ["job_sla_alert", "alert_folded"]
    (emails,) = conn.execute(
        "SELECT count(*) FROM ops.notification_outbox WHERE kind = 'alert'"
    ).fetchone()
    assert emails == 1
