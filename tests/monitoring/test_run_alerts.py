"""Failure, consecutive-failure and recovery alerts, and the audit of manual runs."""

from __future__ import annotations

import pytest
from dagster import DagsterEventType, DagsterInstance, SkipReason, build_run_status_sensor_context

from mm_orchestration.features.invitations.job import invite_cleanup
from mm_orchestration.monitoring.run_alerts import (
    job_failure_sensor,
    job_recovery_sensor,
    manual_run_audit_sensor,
)
from mm_orchestration.platform.database import PortalDatabase
from tests.conftest import create_database, drop_database


@pytest.fixture
def broken_db(pg_server):
    """A database without the portal tables: invite-cleanup fails at once, without retries."""
    name = create_database(pg_server, template=None)
    db = PortalDatabase(url=pg_server.url(name))
    yield db
    db.close()
    drop_database(pg_server, name)


def run(instance, db, tags=None):
    result = invite_cleanup.execute_in_process(
        instance=instance, resources={"portal_db": db}, raise_on_error=False, tags=tags or {}
    )
    return instance.get_run_by_id(result.run_id)


def context_for(instance, dagster_run, event_type, resources=None):
    (record,) = instance.all_logs(dagster_run.run_id, of_type=event_type)
    return build_run_status_sensor_context(
        sensor_name="s",
        dagster_instance=instance,
        dagster_run=dagster_run,
        dagster_event=record.dagster_event,
        resources=resources,
    )


def test_failure_streak_and_recovery_alert_once_each(broken_db, portal_db):
    with DagsterInstance.ephemeral() as instance:
        first = run(instance, broken_db)
        requests = job_failure_sensor(
            context_for(instance, first, DagsterEventType.RUN_FAILURE).for_run_failure()
        )
        assert [r.run_key for r in requests] == [f"job-failed:{first.run_id}"]
        config = requests[0].run_config["ops"]["record_alert"]["config"]
        assert config["contact"] == "reliability" and "invite-cleanup failed" in config["subject"]

        second = run(instance, broken_db)
        requests = job_failure_sensor(
            context_for(instance, second, DagsterEventType.RUN_FAILURE).for_run_failure()
        )
        assert [r.run_key for r in requests] == [
            f"job-failed:{second.run_id}",
            f"job-streak:invite-cleanup:{first.run_id}",
        ]

        third = run(instance, broken_db)  # the same streak: no second streak alert
        requests = job_failure_sensor(
            context_for(instance, third, DagsterEventType.RUN_FAILURE).for_run_failure()
        )
        assert [r.run_key for r in requests] == [f"job-failed:{third.run_id}"]

        fixed = run(instance, portal_db)
        assert fixed.is_success
        recovery = job_recovery_sensor(context_for(instance, fixed, DagsterEventType.RUN_SUCCESS))
        assert recovery.run_key == f"job-recovered:invite-cleanup:{fixed.run_id}"
        assert (
            "after 3 consecutive failures"
            in recovery.run_config["ops"]["record_alert"]["config"]["body"]
        )

        again = run(instance, portal_db)
        quiet = job_recovery_sensor(context_for(instance, again, DagsterEventType.RUN_SUCCESS))
        assert isinstance(quiet, SkipReason)


def test_the_audit_sensor_only_reconciles_runs_nobody_audited(portal_db, conn):
    from mm_orchestration.platform import audit

    with DagsterInstance.ephemeral() as instance:
        manual = run(instance, portal_db, {"mm/actor": "olivia", "mm/trigger": "cli"})
        nameless = run(instance, portal_db)
        audited = run(instance, portal_db, {"mm/actor": "adam"})
        scheduled = run(instance, portal_db, {"dagster/schedule_name": "invite_cleanup_schedule"})
        # The console (or mm-jobs run) wrote this one's entry when it was launched.
        audit.record(conn, "adam", "launch_run", "invite-cleanup", audited.run_id, {})
        for dagster_run in (manual, manual, nameless, audited, scheduled):
            with context_for(
                instance, dagster_run, DagsterEventType.RUN_START, {"portal_db": portal_db}
            ) as context:
                manual_run_audit_sensor(context)
    rows = conn.execute(
        "SELECT actor, action, job_name, run_id, details, outcome FROM ops.audit_log"
        " WHERE action = 'manual_run' ORDER BY id"
    ).fetchall()
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        ("olivia", "manual_run", "invite-cleanup", manual.run_id, "reconciled"),
        ("unknown", "manual_run", "invite-cleanup", nameless.run_id, "reconciled"),
    ]
    assert rows[0][4]["trigger"] == "cli" and "config" in rows[0][4]
    assert "no entry was written" in rows[0][4]["reconciled"]


def test_sla_alert_fires_once_for_a_slow_run_and_never_for_a_fast_one(monkeypatch):
    import time

    from dagster import DagsterEvent, build_sensor_context

    from mm_orchestration.features.share_links.job import share_link_expiry
    from mm_orchestration.monitoring.sla import overdue_runs, sla_sensor

    with DagsterInstance.ephemeral() as instance:
        run = instance.create_run_for_job(
            job_def=share_link_expiry, tags={"mm/job": "share-link-expiry"}
        )
        instance.report_dagster_event(
            DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name),
            run.run_id,
        )
        now = time.time()
        assert overdue_runs(instance, now + 30) == []  # fast so far: within 60 s
        ((run_id, spec, seconds),) = overdue_runs(instance, now + 61)
        assert run_id == run.run_id and spec.name == "share-link-expiry" and seconds > 60
        with build_sensor_context(instance=instance) as context:
            result = sla_sensor(context)
        assert isinstance(result, SkipReason)  # really running for well under a minute
        monkeypatch.setattr("mm_orchestration.monitoring.sla.time.time", lambda: now + 61)
        with build_sensor_context(instance=instance) as context:
            (request,) = sla_sensor(context).run_requests
    # Keyed by the run id: Dagster never launches a second alert for the same run key.
    assert request.run_key == f"sla:{run.run_id}"
    assert "past its 60 s SLA" in request.run_config["ops"]["record_alert"]["config"]["subject"]


def test_an_alert_run_jumps_the_run_queue():
    """Behind a backlog of queued runs an alert would wait its turn: its run carries
    Dagster's priority tag, higher than any other run's, and names the JSON logger."""
    from mm_orchestration.monitoring.alerts import alert_request

    request = alert_request(
        "k", "reliability", "subject", "body", "act", "share-link-expiry", {}, "failure"
    )
    assert int(request.tags["dagster/priority"]) > 0
    assert request.run_config["loggers"] == {"console": {}}
