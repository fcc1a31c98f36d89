"""Drills that never lapse unnoticed: each record says when the next is due, a daily check
warns compliance a week before and fails once it is late, and the residency report's
drill check reads the same rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from psycopg.types.json import Jsonb

from mm_orchestration.features.residency.asset import drill_check
from mm_orchestration.features.restore_drill import due
from mm_orchestration.features.restore_drill.due_check import (
    backup_drills,
    restore_drill_due,
    restore_drill_due_alerts,
    restore_drill_due_job,
)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
LAST = NOW - timedelta(days=20)


@pytest.mark.parametrize(
    ("as_of", "state"),
    [
        (LAST + timedelta(days=27, hours=23), "ok"),
        (LAST + timedelta(days=28), "due_soon"),  # a week before the 35 days
        (LAST + timedelta(days=35), "due_soon"),  # due now, not yet late
        (LAST + timedelta(days=35, microseconds=1), "lapsed"),
    ],
)
def test_the_rule(as_of, state):
    found = due.DrillDue(as_of, LAST)
    assert found.due_at == LAST + timedelta(days=35)
    assert found.state == state
    assert due.DrillDue(as_of, None).state == "lapsed"


def record(conn, status, finished_at=None):
    """A drill recorded as backup-verify records it, optionally moved back in time."""
    drill_id, next_due = conn.execute(
        due.RECORD_DRILL,
        {"started": datetime.now(UTC), "status": status, "method": "local",
         "checks": Jsonb({"rto_seconds": 4.2, "rpo_seconds": 60}), "error": None,
         "every": due.DRILL_EVERY},
    ).fetchone()  # fmt: skip
    if finished_at is not None:
        shift = (
            finished_at
            - conn.execute(
                "SELECT finished_at FROM ops.backup_drills WHERE id = %s", [drill_id]
            ).fetchone()[0]
        )
        conn.execute(
            "UPDATE ops.backup_drills SET started_at = started_at + %s, finished_at ="
            " finished_at + %s, next_due_at = next_due_at + %s WHERE id = %s",
            [shift, shift, shift, drill_id],
        )
    return conn.execute(
        "SELECT finished_at, next_due_at FROM ops.backup_drills WHERE id = %s", [drill_id]
    ).fetchone()


def test_each_drill_record_says_when_the_next_is_due(conn):
    failed_first_at, failed_first_due = record(conn, "failed")
    assert failed_first_due == failed_first_at  # never succeeded: due at once
    succeeded_at, next_due = record(conn, "succeeded")
    assert next_due == succeeded_at + timedelta(days=35)
    _, after_failure = record(conn, "failed")
    assert after_failure == next_due  # a failure does not move the date


def evaluate(portal_db):
    """The daily check's job run once; the check's evaluation and the run."""
    defs = dg.Definitions(
        assets=[backup_drills],
        asset_checks=[restore_drill_due],
        jobs=[restore_drill_due_job],
        resources={"portal_db": portal_db},
    )
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(restore_drill_due_job.name).execute_in_process(instance=instance)
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation, instance, instance.get_run_by_id(result.run_id)


def alerts(instance, run):
    (record_,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
    context = dg.build_run_status_sensor_context(
        sensor_name="s", dagster_instance=instance, dagster_run=run,
        dagster_event=record_.dagster_event,
    )  # fmt: skip
    return restore_drill_due_alerts(context)


@pytest.mark.parametrize(
    ("days_ago", "passed", "severity", "state"),
    [
        (10, True, dg.AssetCheckSeverity.WARN, "ok"),
        (30, False, dg.AssetCheckSeverity.WARN, "due_soon"),
        (36, False, dg.AssetCheckSeverity.ERROR, "lapsed"),
    ],
)
def test_the_daily_check_warns_a_week_before_and_fails_once_late(
    conn, portal_db, days_ago, passed, severity, state
):
    record(conn, "succeeded", datetime.now(UTC) - timedelta(days=days_ago))
    evaluation, instance, run = evaluate(portal_db)
    assert (evaluation.passed, evaluation.metadata["state"].value) == (passed, state)
    if not passed:
        assert evaluation.severity == severity
    requests = alerts(instance, run)
    if passed:
        assert isinstance(requests, dg.SkipReason)
        return
    (request,) = requests
    config = request.run_config["ops"]["record_alert"]["config"]
    assert config["contact"] == "compliance"
    assert config["key"].startswith(f"restore-drill:{state}:")
    assert "backup-verify" in config["body"] or "due by" in config["body"]
    # The same due date and state on the next day's run: the same key, one email.
    _, instance2, run2 = evaluate(portal_db)
    assert [r.run_key for r in alerts(instance2, run2)] == [request.run_key]
    # The residency report's check reads the same rule.
    assert drill_check(conn, datetime.now(UTC)).passed is (state != "lapsed")


def test_no_drill_ever_is_late(portal_db):
    evaluation, _, _ = evaluate(portal_db)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "no restore drill has ever succeeded" in evaluation.description


def test_a_drill_hours_late_or_due_within_hours_is_never_zero_days():
    late = due.DrillDue(LAST + timedelta(days=35, hours=3), LAST).describe()
    assert "is less than a day late" in late and "0 day" not in late
    soon = due.DrillDue(LAST + timedelta(days=34, hours=20), LAST).describe()
    assert "(less than a day left)" in soon and "0 day" not in soon
    assert "is 1 day late" in due.DrillDue(LAST + timedelta(days=36, hours=1), LAST).describe()
    assert "(3 days left)" in due.DrillDue(LAST + timedelta(days=31, hours=1), LAST).describe()
