"""tenant_health_daily: statuses at their boundaries, the summary email, the schedule."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from dagster import DagsterInstance, materialize

from mm_orchestration.features.tenant_health.asset import reference_time, tenant_health_daily
from tests import factories as f
from tests.features.analytics.test_rollup import H, event, rollup

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

DAY = date(2026, 11, 20)
REF = reference_time(DAY)


def milestone(conn, tenant, due, completed=None):
    conn.execute(
        "INSERT INTO portal.milestones (tenant_id, name, due_at, completed_at) "
        "VALUES (%s, 'Fine cut', %s, %s)",
        [tenant, due, completed],
    )


def overdue_tasks(conn, tenant, n):
    for _ in range(n):
        conn.execute(
            "INSERT INTO portal.tasks (tenant_id, title, due_at) VALUES (%s, 'x', %s)",
            [tenant, REF - timedelta(hours=1)],
        )


def health(portal_db, mailer, job_settings):
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [tenant_health_daily],
            partition_key=DAY.isoformat(),
            instance=instance,
            raise_on_error=False,
            resources={"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings},
        )


def test_each_status_rule_at_its_boundary(conn, portal_db, mailer, job_settings, sendgrid):
    names = {}

    def agency(name):
        names[name] = f.tenant(conn, name=name)
        return names[name]

    milestone(conn, agency("red overdue milestone"), REF - timedelta(minutes=1))
    milestone(conn, agency("amber at risk"), REF + timedelta(hours=71, minutes=59))
    milestone(conn, agency("green 72h away"), REF + timedelta(hours=72))
    milestone(conn, agency("green completed"), REF - timedelta(days=1), REF - timedelta(days=2))
    overdue_tasks(conn, agency("amber six tasks"), 6)
    overdue_tasks(conn, agency("green five tasks"), 5)
    t = agency("green links")
    a = f.asset(conn, t)
    f.share_link(conn, t, a, None, REF + timedelta(days=3))
    f.share_link(conn, t, a, None, REF - timedelta(days=3))  # past expiry: not active
    conn.execute("UPDATE portal.share_links SET view_count = 7")
    f.tenant(conn, status="suspended", name="suspended agency")

    result = health(portal_db, mailer, job_settings)

    assert result.success
    got = dict(
        conn.execute(
            "SELECT t.name, h.status FROM ops.tenant_health_daily h JOIN portal.tenants t "
            "ON t.id = h.tenant_id WHERE h.day = %s",
            [DAY],
        ).fetchall()
    )
    assert got == {
        "red overdue milestone": "red",
        "amber at risk": "amber",
        "green 72h away": "green",
        "green completed": "green",
        "amber six tasks": "amber",
        "green five tasks": "green",
        "green links": "green",
    }
    links = conn.execute(
        "SELECT active_share_links, share_link_views FROM "
        "ops.tenant_health_daily WHERE tenant_id = %s",
        [t],
    ).fetchone()
    assert links == (1, 14)
    (mat,) = result.asset_materializations_for_node("ops__tenant_health_daily")
    assert (
        mat.metadata["red"].value,
        mat.metadata["amber"].value,
        mat.metadata["green"].value,
    ) == (1, 2, 4)
    table = mat.metadata["red_and_amber"].value
    assert "| red overdue milestone | red | 1 milestone(s) overdue |" in table
    assert "| amber six tasks | amber | 6 tasks overdue |" in table


def test_summary_email_sent_once_per_day(conn, portal_db, mailer, job_settings, sendgrid):
    milestone(conn, f.tenant(conn, name="Bondi"), REF - timedelta(days=1))
    assert health(portal_db, mailer, job_settings).success
    assert health(portal_db, mailer, job_settings).success  # rerun: same rows, no 2nd email
    assert sendgrid.accepted_recipients() == ["admin@motionmavericks.com.au"]
    assert sendgrid.mail_requests[0].body["subject"] == (
        "Tenant health 2026-11-20: 1 red, 0 amber, 0 green"
    )
    assert conn.execute("SELECT count(*) FROM ops.tenant_health_daily").fetchone()[0] == 1


def test_failed_run_notifies_the_admin(pg_server):
    from dagster import DagsterEventType, DagsterRunStatus, build_run_status_sensor_context

    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.monitoring.run_alerts import job_failure_sensor
    from mm_orchestration.platform.database import PortalDatabase
    from mm_orchestration.platform.settings import Settings
    from tests.conftest import create_database, drop_database

    empty = create_database(pg_server, template=None)  # no tables: fails at once, no retry
    db = PortalDatabase(url=pg_server.url(empty))
    try:
        with DagsterInstance.ephemeral() as instance:
            job = build_definitions(Settings()).resolve_job_def("tenant_health_check")
            result = job.execute_in_process(
                instance=instance,
                raise_on_error=False,
                partition_key=DAY.isoformat(),
                resources={"portal_db": db},
            )
            run = instance.get_run_by_id(result.run_id)
            (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)
            context = build_run_status_sensor_context(
                sensor_name="job_failure_sensor",
                dagster_instance=instance,
                dagster_run=run,
                dagster_event=failure.dagster_event,
            ).for_run_failure()
            (request,) = job_failure_sensor(context)
    finally:
        db.close()
        drop_database(pg_server, empty)
    assert run.status == DagsterRunStatus.FAILURE
    config = request.run_config["ops"]["record_alert"]["config"]
    assert config["contact"] == "admin" and "tenant-health-check failed" in config["subject"]
    assert request.run_key == f"job-failed:{run.run_id}"


def test_tenant_health_schedule_targets_the_day_starting_in_sydney():
    from dagster import build_schedule_context

    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.platform.settings import Settings

    defs = build_definitions(Settings())
    sched = defs.resolve_schedule_def("tenant_health_check_schedule")
    assert sched.cron_schedule == "0 6 * * *"
    assert sched.execution_timezone == "Australia/Sydney"
    tick = reference_time(DAY)
    with build_schedule_context(
        scheduled_execution_time=tick, repository_def=defs.get_repository_def()
    ) as context:
        (request,) = sched.evaluate_tick(context).run_requests
    assert request.partition_key == DAY.isoformat()


def test_names_from_portal_rows_are_literal_text_in_console_tables(
    conn, portal_db, mailer, job_settings, sendgrid
):
    """Tenant names and event types are typed by users: in the console's Markdown they
    are text (no link, image or extra cell), and the summary email lists them plainly."""
    name = "[Pay now](http://x.example) |evil| ![i](http://x.example/i.png)"
    milestone(conn, f.tenant(conn, name=name), REF - timedelta(days=1))
    result = health(portal_db, mailer, job_settings)
    (mat,) = result.asset_materializations_for_node("ops__tenant_health_daily")
    (line,) = [r for r in mat.metadata["red_and_amber"].value.splitlines() if "Pay" in r]
    assert line == (
        "| \\[Pay now\\](http\\://x.example) \\|evil\\| !\\[i\\](http\\://x.example/i.png)"
        " | red | 1 milestone(s) overdue |"
    )
    text = sendgrid.mail_requests[0].body["content"][0]["value"]
    assert f"- {name}: red (1 milestone(s) overdue)" in text

    t = f.tenant(conn, name="Events")
    event(conn, t, "<b>x</b>|[y](z)", H + timedelta(minutes=1), None)
    rolled = rollup(portal_db)
    (mat,) = rolled.asset_materializations_for_node("ops__analytics_hourly")
    assert "| \\<b\\>x\\</b\\>\\|\\[y\\](z) | 1 | 1 |" in mat.metadata["top_event_types"].value
