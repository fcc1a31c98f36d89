"""notification-digest: recipients, local days, template batches, exactly once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mm_orchestration.features.digests.job import notification_digest
from tests import factories as f
from tests.conftest import run_job
from tests.sendgrid_server import Reply

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

DAY = "2026-11-30"
# The Sydney day's period as stored and keyed: its bounds as instants.
PERIOD = "2026-11-29T13:00:00Z/2026-11-30T13:00:00Z"
REF = datetime(2026, 11, 30, 8, 0, tzinfo=ZoneInfo("Australia/Sydney"))  # 2026-11-29T21:00Z
AT = REF.isoformat()  # 08:00 in Sydney: the default choice's moment


@pytest.fixture
def digest(portal_db, mailer, job_settings):
    def run(now: str = AT, force: bool = False, **config):
        return run_job(
            notification_digest,
            {"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings},
            {"ops": {"queue_due_digests": {"config": {"now": now, "force": force, **config}}}},
        )

    return run


def task(conn, tenant, user, title, due_at, completed_at=None, project=None):
    conn.execute(
        "INSERT INTO portal.tasks (tenant_id, project_id, assignee_id, title, due_at,"
        " completed_at) VALUES (%s, %s, %s, %s, %s, %s)",
        [tenant, project, user, title, due_at, completed_at],
    )


def personalizations(sendgrid):
    return {
        p["to"][0]["email"]: p
        for r in sendgrid.mail_requests
        if r.status == 202
        for p in r.body["personalizations"]
    }


def test_recipients_are_chosen_right(conn, digest, sendgrid):
    active = f.tenant(conn)
    suspended = f.tenant(conn, status="suspended")
    due = REF + timedelta(hours=3)
    people = {
        "yes@a.example": f.user(conn, active, email="yes@a.example"),
        "optout@a.example": f.user(conn, active, email="optout@a.example", digest_opt_in=False),
        "gone@a.example": f.user(
            conn, active, email="gone@a.example", deactivated_at=REF - timedelta(days=2)
        ),
        "bounced@a.example": f.user(conn, active, email="bounced@a.example"),
        "suspended@b.example": f.user(conn, suspended, email="suspended@b.example"),
    }
    f.user(conn, active, email="idle@a.example")  # nothing to report
    f.suppression(conn, "Bounced@A.example", reason="bounce")
    for user in people.values():
        task(conn, active, user, "Review colour grade", due)

    result = digest()

    assert result.success
    assert sorted(personalizations(sendgrid)) == ["yes@a.example"]
    assert result.output_for_node("queue_due_digests")["queued"] == 1


def test_local_day_boundaries_in_two_time_zones(conn, digest, sendgrid):
    t = f.tenant(conn)
    sydney = f.user(conn, t, email="syd@a.example", timezone="Australia/Sydney")
    perth = f.user(conn, t, email="per@a.example", timezone="Australia/Perth")
    syd, per = ZoneInfo("Australia/Sydney"), ZoneInfo("Australia/Perth")
    # The end of the next local day is 2 Dec 00:00, local to each person.
    task(conn, t, sydney, "syd last minute", datetime(2026, 12, 1, 23, 59, tzinfo=syd))
    task(conn, t, sydney, "syd too late", datetime(2026, 12, 2, 0, 0, tzinfo=syd))
    task(conn, t, perth, "per last minute", datetime(2026, 12, 1, 23, 59, tzinfo=per))
    task(conn, t, perth, "per too late", datetime(2026, 12, 2, 0, 0, tzinfo=per))
    # 1 Dec 15:30 UTC is 2 Dec 02:30 in Sydney (too late) but 1 Dec 23:30 in Perth (due).
    instant = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    task(conn, t, sydney, "syd same instant", instant)
    task(conn, t, perth, "per same instant", instant)

    # Each at 08:00 in their own zone: Sydney's first, Perth's three hours later.
    assert digest().success
    assert list(personalizations(sendgrid)) == ["syd@a.example"]
    assert digest(datetime(2026, 11, 30, 8, 0, tzinfo=per).isoformat()).success

    got = personalizations(sendgrid)
    syd_titles = [i["title"] for i in got["syd@a.example"]["dynamic_template_data"]["due_soon"]]
    per_titles = [i["title"] for i in got["per@a.example"]["dynamic_template_data"]["due_soon"]]
    assert syd_titles == ["syd last minute"]
    assert per_titles == ["per same instant", "per last minute"]  # by due time


def test_exact_personalization_content(conn, digest, sendgrid):
    t = f.tenant(conn, name="Kangaroo Creative")
    project = conn.execute(
        "INSERT INTO portal.projects (tenant_id, name) VALUES (%s, 'Summer Campaign') RETURNING id",
        [t],
    ).fetchone()[0]
    olivia = f.user(conn, t, email="olivia@kangaroo.example", display_name="Olivia")
    other = f.user(conn, t, email="jack@kangaroo.example", display_name="Jack")
    syd = ZoneInfo("Australia/Sydney")
    task(
        conn,
        t,
        olivia,
        "Approve fine cut",
        datetime(2026, 11, 30, 17, 0, tzinfo=syd),
        None,
        project,
    )
    task(conn, t, olivia, "Send captions", datetime(2026, 11, 28, 9, 30, tzinfo=syd), None, project)
    task(
        conn,
        t,
        olivia,
        "Done already",
        datetime(2026, 11, 29, 9, 0, tzinfo=syd),
        REF - timedelta(days=1),
        project,
    )
    task(conn, t, other, "Jack's task", datetime(2026, 11, 30, 12, 0, tzinfo=syd))
    f.asset(
        conn,
        t,
        title="Hero video",
        status="ready",
        status_changed_at=datetime(2026, 11, 29, 15, 0, tzinfo=syd),
    )
    f.asset(
        conn,
        t,
        title="Teaser",
        status="errored",
        status_changed_at=datetime(2026, 11, 30, 6, 0, tzinfo=syd),
    )
    f.asset(
        conn,
        t,
        title="Old news",
        status="ready",
        status_changed_at=datetime(2026, 11, 29, 7, 59, tzinfo=syd),
    )
    f.asset(
        conn,
        t,
        title="Still encoding",
        status="preparing",
        status_changed_at=datetime(2026, 11, 30, 7, 0, tzinfo=syd),
    )

    assert digest().success

    (request,) = sendgrid.mail_requests
    assert request.body["template_id"] == "d-digest-test"
    assert request.body["from"] == {"email": "jobs@motionmavericks.example"}
    p = personalizations(sendgrid)["olivia@kangaroo.example"]
    assert p["custom_args"] == {"idempotency_key": f"digest:{olivia}:{PERIOD}"}
    assert p["dynamic_template_data"] == {
        "display_name": "Olivia",
        "tenant_name": "Kangaroo Creative",
        "date": DAY,
        "period": PERIOD,
        "due_soon": [
            {
                "title": "Approve fine cut",
                "project": "Summer Campaign",
                "due_at": "2026-11-30T06:00:00+00:00",
                "due_local": "Mon 30 Nov 2026 17:00",
            }
        ],
        "overdue": [
            {
                "title": "Send captions",
                "project": "Summer Campaign",
                "due_at": "2026-11-27T22:30:00+00:00",
                "due_local": "Sat 28 Nov 2026 09:30",
            }
        ],
        "asset_updates": [
            {"title": "Hero video", "status": "ready", "changed_at": "2026-11-29T04:00:00+00:00"},
            {"title": "Teaser", "status": "errored", "changed_at": "2026-11-29T19:00:00+00:00"},
        ],
        "counts": {"due_soon": 1, "overdue": 1, "asset_updates": 2},
    }
    # Jack gets the tenant's video news and his own task, not Olivia's.
    jack = personalizations(sendgrid)["jack@kangaroo.example"]["dynamic_template_data"]
    assert [i["title"] for i in jack["due_soon"]] == ["Jack's task"]
    assert jack["overdue"] == [] and len(jack["asset_updates"]) == 2


@pytest.fixture
def many_users(conn):
    """2,500 people in one agency, each with one task due today."""
    t = f.tenant(conn)
    conn.execute(
        """WITH u AS (
               INSERT INTO portal.users (tenant_id, email, display_name)
               SELECT %s, 'person' || i || '@many.example', 'Person ' || i
                 FROM generate_series(1, 2500) i RETURNING id)
           INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at)
           SELECT %s, id, 'Review', %s FROM u""",
        [t, t, REF + timedelta(hours=2)],
    )
    return t


def test_2500_users_go_in_three_requests(conn, digest, sendgrid, many_users):
    assert digest().success
    sizes = [len(r.body["personalizations"]) for r in sendgrid.mail_requests]
    assert sizes == [1000, 1000, 500]
    assert len(set(sendgrid.accepted_recipients())) == 2500
    assert (
        conn.execute(
            "SELECT count(*) FROM ops.notification_outbox WHERE status = 'sent'"
        ).fetchone()[0]
        == 2500
    )


def test_429_waits_then_succeeds(conn, digest, sendgrid, many_users):
    reset = str(int(datetime.now(UTC).timestamp()) + 1)
    sendgrid.then(Reply(429, {"errors": [{"message": "slow down"}]}, {"X-RateLimit-Reset": reset}))
    assert digest().success
    assert [r.status for r in sendgrid.mail_requests] == [429, 202, 202, 202]
    assert len(sendgrid.accepted_recipients()) == 2500


def test_500_on_second_batch_never_resends_the_first(conn, digest, sendgrid, many_users):
    sendgrid.then(Reply(202), Reply(500, {"errors": [{"message": "oops"}]}))
    assert digest().success
    assert [r.status for r in sendgrid.mail_requests] == [202, 500, 202, 202]
    accepted = sendgrid.accepted_recipients()
    assert len(accepted) == 2500 and len(set(accepted)) == 2500


def test_a_refusal_of_the_request_itself_stops_and_fails_the_run(
    conn, digest, sendgrid, many_users
):
    """A 400 naming a field of the envelope (the template) is no row's fault: no split can
    fix it. That request's rows and the rest stay pending (with SendGrid's message) for the
    run after the fix, and the run fails saying so."""
    sendgrid.then(Reply(202))
    sendgrid.rule = lambda body: (
        Reply(400, {"errors": [{"message": "The template_id is invalid", "field": "template_id"}]})
        if len(sendgrid.mail_requests) >= 1
        else None
    )
    result = digest()
    assert not result.success
    assert [r.status for r in sendgrid.mail_requests] == [202, 400]
    rows = dict(
        conn.execute(
            "SELECT status || ':' || coalesce(last_error, ''), count(*) FROM "
            "ops.notification_outbox GROUP BY 1"
        ).fetchall()
    )
    assert rows == {
        "sent:": 1000,
        "pending:SendGrid 400: The template_id is invalid": 1000,
        "pending:": 500,
    }


def test_rerun_and_concurrent_runs_send_nothing_twice(conn, digest, sendgrid, many_users):
    results = []
    threads = [threading.Thread(target=lambda: results.append(digest())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.success for r in results)
    assert digest().success  # the same instant again: everyone's period is settled
    assert digest(force=True).success
    accepted = sendgrid.accepted_recipients()
    assert len(accepted) == 2500 and len(set(accepted)) == 2500
    outcomes = dict(
        conn.execute("SELECT outcome, count(*) FROM ops.digest_periods GROUP BY 1").fetchall()
    )
    assert outcomes == {"queued": 2500}
    queued = sorted(r.output_for_node("queue_due_digests")["queued"] for r in results)
    assert queued == [0, 2500]  # one run settled them all; the other found them settled


def test_the_schedule_runs_every_15_minutes_and_its_tick_is_the_window():
    from dagster import build_schedule_context

    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.platform.settings import Settings

    sched = build_definitions(Settings()).resolve_schedule_def("notification_digest_schedule")
    assert sched.cron_schedule == "*/15 * * * *"
    with build_schedule_context(scheduled_execution_time=REF) as context:
        (request,) = sched.evaluate_tick(context).run_requests
    assert request.tags["mm/window"] == "2026-11-29T21:00:00Z"


@pytest.mark.parametrize(
    "bad",
    ["2026-02-30T08:00:00Z", "30/11/2026", "tomorrow", "'; drop table x; --",
     "9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z", "2026-11-30T08:00", "2026-11-30",
     " 2026-1-3T08:00Z"],
)  # fmt: skip
def test_a_bad_now_fails_at_once_naming_the_field_and_sends_nothing(
    conn, portal_db, mailer, job_settings, sendgrid, bad
):
    """Never the present in its place, never a digest of 9999, never an OverflowError
    after three retries."""
    from dagster import DagsterEventType, DagsterInstance

    from mm_orchestration.monitoring.run_status import failure_summary

    with DagsterInstance.ephemeral() as instance:
        result = notification_digest.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings},
            run_config={"ops": {"queue_due_digests": {"config": {"now": bad}}}},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        summary = failure_summary(instance, result.run_id)
        kinds = {r.dagster_event_type for r in instance.all_logs(result.run_id)}
    assert summary.startswith("queue_due_digests: now is "), summary
    assert "accepted: an instant like 2026-11-30T08:00:00+11:00" in summary
    assert summary.endswith("the value is not shown") and repr(bad.strip()) not in summary
    assert DagsterEventType.STEP_UP_FOR_RETRY not in kinds
    assert conn.execute("SELECT count(*) FROM ops.notification_outbox").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM ops.job_runs").fetchone() == (0,)
    assert sendgrid.mail_requests == []


@pytest.mark.parametrize("window", ["2026-02-30", "tomorrow", "0001-01-01", "9999-12-31"])
def test_a_bad_window_tag_is_refused_like_a_bad_now(conn, portal_db, mailer, job_settings, window):
    """An `mm/window` tag set by hand in the console is checked like the config's `now`."""
    from dagster import DagsterInstance

    from mm_orchestration.monitoring.run_status import failure_summary

    with DagsterInstance.ephemeral() as instance:
        result = notification_digest.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings},
            tags={"mm/window": window},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        summary = failure_summary(instance, result.run_id)
    assert summary.startswith("queue_due_digests: tag mm/window is "), summary
    assert window not in summary and summary.endswith("the value is not shown"), summary
    assert conn.execute("SELECT count(*) FROM ops.job_runs").fetchone() == (0,)


@pytest.mark.parametrize(("name", "value"), [("tenant_id", "agency-1"), ("user_id", "olivia")])
def test_a_bad_operator_target_is_refused(conn, digest, name, value):
    result = digest(**{name: value})
    assert not result.success
