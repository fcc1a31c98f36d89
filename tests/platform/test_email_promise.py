"""The outbox keeps its promise against SendGrid's real behaviour (issue 16): one bad address
costs one email, a lost answer never sends twice, a stall never hangs a run, a crash
strands only what was in flight, one bad row never costs the others their digest, and
anything failed for good fails the run so the failure sensor alerts.

Everything goes through the real `sendgrid` SDK to the local stand-in, which enforces
SendGrid's published limits (tests/sendgrid_server.py).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context
from hypothesis import given, settings
from hypothesis import strategies as st

from mm_orchestration import cli
from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.features.share_links.job import share_link_expiry
from mm_orchestration.monitoring.run_alerts import job_failure_sensor
from mm_orchestration.platform.outbox.addresses import address_problem
from mm_orchestration.platform.outbox.mailer import Mailer, TemplateRecipient
from mm_orchestration.platform.outbox.request_plan import plan_requests
from mm_orchestration.platform.outbox.rows import durable as _durable
from mm_orchestration.platform.outbox.sendgrid_client import SendError
from tests import factories as f
from tests.json_lines import json_lines
from tests.run_job_in_subprocess import kill_at_request
from tests.sendgrid_server import Reply, SendGridRecorder

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

DAY = "2026-11-30"
# Sydney's 30 November as a period is keyed by its bounds as instants.
PERIOD = "2026-11-29T13:00:00Z/2026-11-30T13:00:00Z"
REF = datetime(2026, 11, 30, 8, 0, tzinfo=ZoneInfo("Australia/Sydney"))
AT = REF.isoformat()
NOW = datetime.now(UTC)


QUICK_TIMEOUT_SECONDS = 3


@pytest.fixture
def quick_mailer(sendgrid):
    """The production mailer with short timeouts, so a stall costs seconds, not 30 (a loaded
    machine can keep even the local stand-in from answering within 1 s)."""
    return Mailer(
        api_key="SG.test-key",
        api_host=sendgrid.url,
        mail_from="jobs@motionmavericks.example",
        backoff_seconds=0.01,
        max_rate_limit_wait_seconds=1,
        connect_timeout_seconds=QUICK_TIMEOUT_SECONDS,
        read_timeout_seconds=QUICK_TIMEOUT_SECONDS,
    )


@pytest.fixture
def digest(portal_db, quick_mailer, job_settings, instance):
    def run(mailer=None, force=False):
        return notification_digest.execute_in_process(
            resources={
                "portal_db": portal_db,
                "mailer": mailer or quick_mailer,
                "job_settings": job_settings,
            },
            run_config={"ops": {"queue_due_digests": {"config": {"now": AT, "force": force}}}},
            instance=instance,
            raise_on_error=False,
        )

    return run


def people(conn, emails, tasks=1, title="Review the colour grade", timezone=None):
    """One agency; a person per address, in this order (outbox ids follow it), each with
    `tasks` tasks due today."""
    tenant = f.tenant(conn)
    ids = []
    for email in emails:
        cols = {"timezone": timezone} if timezone else {}
        user = f.user(conn, tenant, email=email, **cols)
        conn.execute(
            "INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at) "
            "SELECT %s, %s, %s || ' #' || k, %s FROM generate_series(1, %s) k",
            [tenant, user, title, REF + timedelta(hours=2), tasks],
        )
        ids.append(user)
    return ids


def many(conn, count, domain="many.example"):
    """`count` people in one agency, each with one task due today."""
    tenant = f.tenant(conn)
    conn.execute(
        """WITH u AS (
               INSERT INTO portal.users (tenant_id, email, display_name)
               SELECT %s, 'person' || i || '@' || %s, 'Person ' || i
                 FROM generate_series(1, %s) i RETURNING id)
           INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at)
           SELECT %s, id, 'Review', %s FROM u""",
        [tenant, domain, count, tenant, REF + timedelta(hours=2)],
    )


def outbox(conn):
    """recipient -> (status, last_error, outcome_unknown, attempts)."""
    return {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT recipient, status, last_error, outcome_unknown, attempts "
            "FROM ops.notification_outbox ORDER BY id"
        )
    }


def counts(conn):
    return dict(
        conn.execute(
            "SELECT status || CASE WHEN outcome_unknown THEN '/unknown' ELSE '' END, count(*) "
            "FROM ops.notification_outbox GROUP BY 1"
        ).fetchall()
    )


def failure_of(result):
    """The failed op's own description and metadata."""
    events = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = events[-1].step_failure_data.user_failure_data
    return data.description, data.metadata


def alert_for(instance, result):
    """What the failure sensor requests for this failed run: (contact, subject, body)."""
    run = instance.get_run_by_id(result.run_id)
    (record,) = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
    context = build_run_status_sensor_context(
        sensor_name="job_failure_sensor",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=record.dagster_event,
    ).for_run_failure()
    requests = job_failure_sensor(context)
    config = requests[0].run_config["ops"]["record_alert"]["config"]
    return config["contact"], config["subject"], config["body"]


# -- 1. one malformed address ---------------------------------------------------------


def test_a_malformed_address_fails_alone_before_any_request_and_the_run_alerts(
    conn, digest, sendgrid, instance
):
    people(
        conn,
        ["olivia@kangaroo.example", "jack@kangaroo.example", "mia@kangaroo.example",
         "jonah.harbourlights.example"],
    )  # fmt: skip
    result = digest()

    # The three good addresses go in one request; the bad one never reaches SendGrid.
    assert len(sendgrid.mail_requests) == 1
    assert sorted(sendgrid.accepted_recipients()) == [
        "jack@kangaroo.example", "mia@kangaroo.example", "olivia@kangaroo.example"]  # fmt: skip
    rows = outbox(conn)
    assert rows["jonah.harbourlights.example"][:3] == (
        "failed",
        "invalid address: An email address must have an @-sign.",
        False,
    )
    assert rows["jonah.harbourlights.example"][3] == 0  # no request ever carried it
    assert counts(conn) == {"sent": 3, "failed": 1}
    # Failed for good is a failure: the run fails, no retry, and the sensor alerts.
    assert not result.success
    description, metadata = failure_of(result)
    assert description.startswith("1 digest(s) failed for good (1 invalid address)")
    assert "mm-jobs outbox resend --kind digest" in description
    assert metadata["emails_sent"].value == 3
    assert metadata["emails_invalid_address"].value == 1
    retries = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert retries == []
    contact, subject, body = alert_for(instance, result)
    assert contact == "reliability"
    assert subject.startswith("notification-digest failed: send_digests: 1 digest(s)")
    assert "invalid address" in body


def test_an_empty_address_and_case_insensitive_suppression(conn, portal_db, quick_mailer, sendgrid):
    """Validation covers every sender: an empty owner address fails alone; an owner whose
    address is suppressed in another case is never emailed."""
    t = f.tenant(conn)
    asset = f.asset(conn, t)
    for email in ["empty@kangaroo.example", "Olivia@Kangaroo.Example", "jack@kangaroo.example"]:
        f.share_link(conn, t, asset, f.user(conn, t, email=email), NOW - timedelta(hours=1))
    conn.execute("UPDATE portal.users SET email = '' WHERE email = 'empty@kangaroo.example'")
    f.suppression(conn, "olivia@kangaroo.EXAMPLE", reason="unsubscribe")
    with DagsterInstance.ephemeral() as instance:
        result = share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": quick_mailer},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    rows = outbox(conn)
    assert rows[""][:2] == ("failed", "invalid address: the address is empty")
    assert rows["Olivia@Kangaroo.Example"][0] == "suppressed"
    assert rows["jack@kangaroo.example"][0] == "sent"
    assert sendgrid.accepted_recipients() == ["jack@kangaroo.example"]


def test_two_malformed_addresses_in_different_positions(conn, digest, sendgrid):
    people(
        conn,
        ["a@kangaroo.example", "no-at-sign.example", "c@kangaroo.example",
         "d@kangaroo.example", "two@@kangaroo.example", "f@kangaroo.example"],
    )  # fmt: skip
    result = digest()
    assert not result.success
    (request,) = sendgrid.mail_requests
    assert sorted(p["to"][0]["email"] for p in request.body["personalizations"]) == [
        "a@kangaroo.example", "c@kangaroo.example", "d@kangaroo.example",
        "f@kangaroo.example"]  # fmt: skip
    rows = outbox(conn)
    assert rows["no-at-sign.example"][:2] == (
        "failed", "invalid address: An email address must have an @-sign.")  # fmt: skip
    assert rows["two@@kangaroo.example"][0] == "failed"
    assert rows["two@@kangaroo.example"][1].startswith("invalid address: ")
    assert counts(conn) == {"sent": 4, "failed": 2}
    assert failure_of(result)[0].startswith("2 digest(s) failed for good (2 invalid address)")


def test_sendgrid_naming_two_personalizations_fails_those_rows_and_resends_the_rest(
    conn, digest, sendgrid
):
    """Addresses that look valid to us but SendGrid refuses: its 400 names each culprit
    (`personalizations.1.to.0.email`, `personalizations.4...`); those fail with SendGrid's
    message and the other four go again in a new request."""
    emails = [f"{c}@kangaroo.example" for c in "abcdef"]
    people(conn, emails)
    sendgrid.refuse = {"b@kangaroo.example", "e@kangaroo.example"}
    result = digest()
    first, second = sendgrid.mail_requests
    sent_first = [p["to"][0]["email"] for p in first.body["personalizations"]]
    assert first.status == 400 and sorted(sent_first) == emails
    assert second.status == 202
    assert [p["to"][0]["email"] for p in second.body["personalizations"]] == [
        e for e in sent_first if e not in sendgrid.refuse
    ]
    rows = outbox(conn)
    for bad in ("b@kangaroo.example", "e@kangaroo.example"):
        assert rows[bad][:2] == ("failed", "SendGrid 400: Does not contain a valid address.")
        assert rows[bad][3] == 1
    assert rows["a@kangaroo.example"][0] == "sent" and rows["a@kangaroo.example"][3] == 2
    assert not result.success
    assert failure_of(result)[0].startswith("2 digest(s) failed for good (2 SendGrid 400)")


def test_a_400_naming_nothing_is_halved_until_the_culprit_is_alone(conn, digest, sendgrid):
    emails = [f"p{i}@kangaroo.example" for i in range(8)]
    people(conn, emails)
    chosen: list[str] = []

    def rule(body):
        # The culprit is whoever stands sixth in the first request (index 5).
        if not chosen:
            chosen.append(body["personalizations"][5]["to"][0]["email"])
        if any(p["to"][0]["email"] == chosen[0] for p in body["personalizations"]):
            return Reply(400, {"errors": [{"message": "Bad Request", "field": None}]})
        return None

    sendgrid.rule = rule
    result = digest()
    culprit = chosen[0]
    sizes = [(len(r.body["personalizations"]), r.status) for r in sendgrid.mail_requests]
    # Depth first: a refused half is taken apart before its sibling goes.
    assert sizes == [(8, 400), (4, 202), (4, 400), (2, 400), (1, 202), (1, 400), (2, 202)]
    rows = outbox(conn)
    assert rows[culprit][:2] == ("failed", "SendGrid 400: Bad Request")
    assert counts(conn) == {"sent": 7, "failed": 1}
    assert sorted(sendgrid.accepted_recipients()) == sorted(e for e in emails if e != culprit)
    assert not result.success


# -- 2. size ----------------------------------------------------------------------------


@pytest.fixture
def heavy(conn):
    """800 people with 150 overdue tasks each, long titles: about 36 MB of digests."""
    tenant = f.tenant(conn)
    conn.execute(
        """WITH u AS (
               INSERT INTO portal.users (tenant_id, email, display_name)
               SELECT %s, 'heavy' || i || '@kangaroo.example', 'Person ' || i
                 FROM generate_series(1, 800) i RETURNING id)
           INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at)
           SELECT %s, u.id, 'Conform the final online edit, relink the camera originals, '
                  || 'grade against the approved look, export the broadcast master and '
                  || 'the social cut-downs, then upload every deliverable ' || k,
                  %s - make_interval(hours => k)
             FROM u, generate_series(1, 150) k""",
        [tenant, tenant, REF],
    )


def test_36_mb_of_digests_go_in_requests_under_the_limit(conn, digest, sendgrid, heavy):
    result = digest()
    assert result.success
    sizes = [r.size for r in sendgrid.mail_requests]
    assert sum(sizes) > 30_000_000  # one request would have been refused with 413
    assert len(sizes) == 2 and all(s <= 20_000_000 for s in sizes)
    assert [r.status for r in sendgrid.mail_requests] == [202, 202]
    assert counts(conn) == {"sent": 800}


def test_a_413_splits_the_request_too(conn, digest, sendgrid, heavy):
    """With our own size limit above SendGrid's, the 36 MB request is refused as SendGrid
    would refuse it (before a byte goes) and split: nobody's digest is lost."""
    careless = Mailer(api_key="SG.k", api_host=sendgrid.url, max_request_bytes=100_000_000)
    result = digest(mailer=careless)
    assert result.success
    statuses = [(r.status, len(r.body["personalizations"])) for r in sendgrid.mail_requests]
    assert statuses == [(202, 400), (202, 400)]
    assert counts(conn) == {"sent": 800}


def test_a_413_from_sendgrid_splits_the_request(conn, digest, sendgrid):
    people(conn, [f"p{i}@kangaroo.example" for i in range(4)])
    sendgrid.then(Reply(413, {"errors": [{"message": "Payload Too Large", "field": None}]}))
    result = digest()
    assert result.success
    statuses = [(r.status, len(r.body["personalizations"])) for r in sendgrid.mail_requests]
    assert statuses == [(413, 4), (202, 2), (202, 2)]
    assert counts(conn) == {"sent": 4}


# -- 3. stalls --------------------------------------------------------------------------


def test_a_stall_on_the_second_of_three_batches_costs_the_read_timeout_only(
    conn, digest, sendgrid, instance
):
    many(conn, 2500)
    sendgrid.then(Reply(202), Reply(202, delay=35), Reply(202))
    started = time.monotonic()
    result = digest()
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed  # a 35 s stall, a 1 s read timeout
    assert [len(r.body["personalizations"]) for r in sendgrid.mail_requests] == [1000, 1000, 500]
    assert counts(conn) == {"sent": 1500, "failed/unknown": 1000}
    error = conn.execute(
        "SELECT last_error, idempotency_key FROM ops.notification_outbox "
        "WHERE outcome_unknown LIMIT 1"
    ).fetchone()
    assert error[0].startswith("delivery outcome unknown: SendGrid outcome unknown: POST ")
    # The read timed out, or the whole-answer deadline (the same 1 s) shut it first.
    assert (
        "TimeoutError" in error[0]
        or f"no whole answer within {QUICK_TIMEOUT_SECONDS} s" in error[0]
    )
    assert f"idempotency_key={error[1]}" in error[0]
    assert not result.success
    description, metadata = failure_of(result)
    assert description.startswith("1000 digest(s) failed for good (1000 outcome unknown)")
    assert metadata["emails_outcome_unknown"].value == 1000
    assert "digest:" in metadata["outcome_unknown_keys"].value
    _, subject, _ = alert_for(instance, result)
    assert "1000 digest(s) failed for good (1000 outcome unknown)" in subject
    # Never resent: a forced rerun of the day sends nothing more.
    digest(force=True)
    assert len(sendgrid.mail_requests) == 3
    keys = sendgrid.accepted_keys()
    assert len(keys) == len(set(keys)) == 2500


def test_every_provider_call_is_bounded(sendgrid):
    """The Neon API client and the SendGrid suppression calls have the same timeouts."""
    from mm_orchestration.features.restore_drill.neon import NeonClient, NeonError
    from mm_orchestration.platform import http

    sendgrid.rule = lambda body: Reply(202, delay=35)
    neon = NeonClient("key", "proj", sendgrid.url, http.Timeouts(connect=1, read=0.5))
    started = time.monotonic()
    with pytest.raises(NeonError, match="outcome unknown"):
        neon.create_branch("drill", NOW)
    mailer = Mailer(api_key="SG.k", api_host=sendgrid.url, read_timeout_seconds=0.5)
    with pytest.raises(SendError) as refused:
        mailer.delete_bounces(["a@kangaroo.example"])
    assert refused.value.unknown
    assert time.monotonic() - started < 5


def test_connection_refused_is_retried_then_stays_pending(conn, portal_db, sendgrid):
    """Nothing listening: the request provably never left, so it is retried, then waits."""
    sendgrid.close()
    t = f.tenant(conn)
    f.share_link(conn, t, f.asset(conn, t), f.user(conn, t), NOW - timedelta(hours=1))
    mailer = Mailer(api_key="SG.k", api_host=sendgrid.url, backoff_seconds=0.01, max_attempts=2)
    with DagsterInstance.ephemeral() as instance:
        result = share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    status, error, unknown = conn.execute(
        "SELECT status, last_error, outcome_unknown FROM ops.notification_outbox"
    ).fetchone()
    assert status == "pending" and not unknown
    assert "ConnectionRefusedError" in error


@pytest.mark.parametrize("key", ["SG.k\r\nX: BBBBsecret", "SG.abc\u2019def"])
def test_a_request_http_client_refuses_is_not_sent_and_never_quoted(conn, portal_db, sendgrid, key):
    """Whatever stops a request before it leaves (here a key http.client refuses as a
    header; settings refuse it at load, the resource is built by hand) is 'not sent': the
    row waits, the run fails, and the message does not quote the request or its key."""
    t = f.tenant(conn)
    f.share_link(conn, t, f.asset(conn, t), f.user(conn, t), NOW - timedelta(hours=1))
    mailer = Mailer(api_key=key, api_host=sendgrid.url, backoff_seconds=0.01, max_attempts=2)
    with DagsterInstance.ephemeral() as instance:
        result = share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer},
            instance=instance,
            raise_on_error=False,
        )
        logs = " ".join(str(e.message) for e in instance.all_logs(result.run_id))
    assert not result.success
    status, error = conn.execute(
        "SELECT status, last_error FROM ops.notification_outbox"
    ).fetchone()
    assert status == "pending" and "not sent" in error
    assert sendgrid.mail_requests == []
    for secret in ("BBBB", "abc", "SG.k"):
        assert secret not in error and secret not in logs


# -- 4. lost answers ----------------------------------------------------------------------


def test_a_lost_answer_is_never_resent(conn, digest, sendgrid, instance):
    many(conn, 3000)
    sendgrid.then(Reply(drop=True))  # SendGrid reads the first request, the answer is lost
    result = digest()
    assert [r.status for r in sendgrid.mail_requests] == [0, 202, 202]  # no retry
    assert counts(conn) == {"sent": 2000, "failed/unknown": 1000}
    attempts = conn.execute(
        "SELECT DISTINCT attempts FROM ops.notification_outbox WHERE outcome_unknown"
    ).fetchall()
    assert attempts == [(1,)]
    assert not result.success
    assert failure_of(result)[0].startswith("1000 digest(s) failed for good (1000 outcome")
    contact, subject, _ = alert_for(instance, result)
    assert contact == "reliability" and "outcome unknown" in subject
    # Never sent again, not even by a forced rerun of the day.
    digest(force=True)
    assert len(sendgrid.mail_requests) == 3


def test_outbox_list_unknown_prints_the_keys(conn, digest, sendgrid, database_url, capsys,
                                             monkeypatch):  # fmt: skip
    people(conn, ["olivia@kangaroo.example"])
    sendgrid.then(Reply(drop=True))
    digest()
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli.main(["outbox", "list", "--unknown"]) == 0
    out = capsys.readouterr().out
    key = conn.execute("SELECT idempotency_key FROM ops.notification_outbox").fetchone()[0]
    assert out.startswith(f"{key}  unknown  digest  ")
    assert "olivia" not in out  # keys and reasons, never addresses
    assert out.rstrip().endswith("1 row(s)")


# -- 5. a crash strands only what was in flight -----------------------------------------------


def test_a_crash_leaves_only_the_request_in_flight_unknown(
    conn, database_url, portal_db, mailer, sendgrid, project_root
):
    t = f.tenant(conn)
    asset = f.asset(conn, t)
    for i in range(3):
        owner = f.user(conn, t, email=f"owner{i}@kangaroo.example")
        f.share_link(conn, t, asset, owner, NOW - timedelta(minutes=1))
    sendgrid.then(Reply(202, delay=30))  # the first request hangs; then the process dies
    kill_at_request(database_url, sendgrid, project_root, 1)
    assert counts(conn) == {"sending": 1, "pending": 2}  # not the whole claim
    with DagsterInstance.ephemeral() as instance:
        again = share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer},
            instance=instance,
            raise_on_error=False,
        )
    assert again.success
    assert counts(conn) == {"sending": 1, "sent": 2}
    assert sendgrid.arrivals == 3  # the one in flight, then the two that waited


def test_a_crash_in_the_second_digest_request_strands_only_its_1000_rows(
    conn, database_url, digest, sendgrid, project_root
):
    many(conn, 2500)
    sendgrid.then(Reply(202), Reply(202, delay=30))  # the second request hangs; the run dies
    kill_at_request(database_url, sendgrid, project_root, 2, "digest", AT)
    # The first request's 'sent' marks went with the second's claim: only the request in
    # flight is 'sending'; the third request's rows never left and stay pending.
    assert counts(conn) == {"sent": 1000, "sending": 1000, "pending": 500}
    assert digest().success  # the rest goes; the 1,000 in flight are never sent again
    assert counts(conn) == {"sent": 1500, "sending": 1000}
    assert [len(r.body["personalizations"]) for r in sendgrid.mail_requests] == [1000, 1000, 500]


# -- 6. one bad row never costs the others their digest -----------------------------------------


def test_an_unknown_time_zone_falls_back_and_everyone_gets_their_digest(
    conn, digest, sendgrid, caplog
):
    ids = people(conn, ["a@kangaroo.example", "b@kangaroo.example", "c@kangaroo.example"])
    (odd,) = people(conn, ["jonah@harbourlights.example"], timezone="Etc/Unknown")
    result = digest()
    assert result.success
    assert len(sendgrid.accepted_recipients()) == 4
    (metadata,) = [
        e.step_output_data.metadata
        for e in result.all_events
        if e.is_successful_output and e.step_key == "queue_due_digests"
    ]
    assert metadata["fallbacks"].value == 1 and metadata["digests_queued"].value == 4
    key = conn.execute(
        "SELECT idempotency_key FROM ops.notification_outbox WHERE user_id = %s", [odd]
    ).fetchone()[0]
    assert key == f"digest:{odd}:{PERIOD}"  # the day in the fallback zone (Sydney)
    logged = [r.getMessage() for r in caplog.records if "digest.choice_fallback" in r.getMessage()]
    assert len(logged) == 1 and str(odd) in logged[0] and str(ids[0]) not in logged[0]
    assert "jonah" not in logged[0]


def test_an_unknown_zone_never_costs_an_owner_the_expiry_notice(
    conn, portal_db, quick_mailer, sendgrid, caplog
):
    t = f.tenant(conn)
    owner = f.user(conn, t, email="olivia@kangaroo.example", timezone="Etc/Unknown")
    f.share_link(conn, t, f.asset(conn, t), owner, NOW - timedelta(hours=1))
    with DagsterInstance.ephemeral() as instance:
        result = share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": quick_mailer},
            instance=instance,
            raise_on_error=False,
        )
    assert result.success
    assert sendgrid.accepted_recipients() == ["olivia@kangaroo.example"]
    (request,) = sendgrid.mail_requests
    assert "AEDT" in request.body["content"][0]["value"]  # Sydney time, the fallback
    (metadata,) = [
        e.step_output_data.metadata
        for e in result.all_events
        if e.is_successful_output and e.step_key == "send_share_link_expiry_emails"
    ]
    assert metadata["timezone_fallbacks"].value == 1
    logged = [r.getMessage() for r in caplog.records if "timezone_fallback" in r.getMessage()]
    assert len(logged) == 1 and str(owner) in logged[0]


# -- operators: resend after a fix ------------------------------------------------------------


def test_a_rerun_after_fixing_a_bad_address_resends_only_that_row(
    conn, digest, sendgrid, database_url, monkeypatch
):
    (*_, jonah) = people(
        conn, ["olivia@kangaroo.example", "jack@kangaroo.example", "jonah.harbourlights.example"]
    )
    assert not digest().success
    assert len(sendgrid.mail_requests) == 1

    conn.execute(
        "UPDATE portal.users SET email = 'jonah@harbourlights.example' WHERE id = %s", [jonah]
    )
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli.main(["outbox", "resend", "--kind", "digest", "--since", "2000-01-01",
                     "--actor", "olivia"]) == 0  # fmt: skip
    again = digest()  # the day's queueing is done (skipped); delivery sends what waits
    assert again.success
    assert len(sendgrid.mail_requests) == 2
    (p,) = sendgrid.mail_requests[1].body["personalizations"]
    assert p["to"] == [{"email": "jonah@harbourlights.example"}]
    assert p["custom_args"] == {"idempotency_key": f"digest:{jonah}:{PERIOD}"}  # the same key
    assert counts(conn) == {"sent": 3}
    actor, action, details = conn.execute(
        "SELECT actor, action, details FROM ops.audit_log WHERE action = 'outbox_resend'"
    ).fetchone()
    assert (actor, action, details["count"]) == ("olivia", "outbox_resend", 1)
    assert details["keys"] == [f"digest:{jonah}:{PERIOD}"]
    # Nothing sent is ever requeued, and unknown outcomes stay put without --include-unknown.
    assert cli.main(["outbox", "resend", "--kind", "digest", "--since", "2000-01-01"]) == 0
    assert digest().success and len(sendgrid.mail_requests) == 2


def test_a_revoked_key_stops_delivery_and_fails_the_run(conn, portal_db, quick_mailer, sendgrid):
    t = f.tenant(conn)
    asset = f.asset(conn, t)
    for i in range(3):
        owner = f.user(conn, t, email=f"owner{i}@kangaroo.example")
        f.share_link(conn, t, asset, owner, NOW - timedelta(hours=1))
    sendgrid.rule = lambda body: Reply(
        401, {"errors": [{"message": "The provided authorization grant is invalid, expired, "
                          "or revoked", "field": None}]})  # fmt: skip
    with DagsterInstance.ephemeral() as instance:
        result = share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": quick_mailer},
            instance=instance,
            raise_on_error=False,
        )
        retries = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert not result.success and retries == []
    assert len(sendgrid.mail_requests) == 1  # every other request would be refused too
    # Nobody's notice is lost for the account's fault: all three wait for the new key.
    assert counts(conn) == {"pending": 3}
    description, metadata = failure_of(result)
    assert description.startswith("SendGrid refuses every request (SendGrid 401: The provided")
    assert "1 expiry email(s) held and the rest stay pending" in description
    assert metadata["emails_held_after_refusal"].value == 1

    sendgrid.rule = None  # the key is replaced
    with DagsterInstance.ephemeral() as instance:
        again = share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": quick_mailer}, instance=instance
        )
    assert again.success and counts(conn) == {"sent": 3}
    assert len(sendgrid.accepted_recipients()) == 3


# -- the stand-in and the pieces ------------------------------------------------------------


def test_the_stand_in_enforces_sendgrids_limits(sendgrid):
    mailer = Mailer(api_key="SG.k", api_host=sendgrid.url)
    one = TemplateRecipient(key="k", recipient="a@kangaroo.example")
    too_many = [TemplateRecipient(key=f"k{i}", recipient=f"p{i}@x.example") for i in range(1001)]
    body = {**mailer.template_envelope("d-x")}
    with pytest.raises(SendError) as refused:  # past our own guard, straight to "SendGrid"
        mailer._post({**body, "personalizations": [mailer.personalization(r) for r in too_many]})
    assert refused.value.status == 400 and refused.value.errors[0][0] == "personalizations"
    wide = mailer.personalization(one)
    wide["to"] = [{"email": f"p{i}@x.example"} for i in range(1001)]
    with pytest.raises(SendError) as refused:
        mailer.send_template("d-x", [json.dumps(wide)])
    assert refused.value.status == 400 and "recipients" in str(refused.value)
    huge = TemplateRecipient(key="k", recipient="a@kangaroo.example", data={"x": "y" * 30_000_000})
    body = json.dumps({**mailer.template_envelope("d-x"), "personalizations": [
        mailer.personalization(huge)]})  # fmt: skip
    request = urllib.request.Request(f"{sendgrid.url}/v3/mail/send", data=body.encode())
    with pytest.raises(urllib.error.HTTPError) as too_big:  # the stand-in, straight
        urllib.request.urlopen(request, timeout=30)
    assert too_big.value.code == 413
    # Our own mailer never sends it: refused before a byte goes, as SendGrid would.
    before = len(sendgrid.mail_requests)
    with pytest.raises(SendError) as refused:
        mailer.send_template_batch("d-x", [huge])
    assert refused.value.status == 413 and not refused.value.transient
    assert len(sendgrid.mail_requests) == before
    bad = [one, TemplateRecipient(key="k2", recipient="jonah.harbourlights.example")]
    with pytest.raises(SendError) as refused:
        mailer.send_template_batch("d-x", bad)
    assert refused.value.named_personalizations() == {1: "Does not contain a valid address."}
    assert refused.value.errors[0][0] == "personalizations.1.to.0.email"


def test_requests_are_planned_by_every_limit_together():
    assert [len(p) for p in plan_requests([(1, 100)] * 2500, 50)] == [1000, 1000, 500]
    assert [len(p) for p in plan_requests([(3, 100)] * 1000, 50)] == [333, 333, 333, 1]
    by_size = plan_requests([(1, 1000)] * 10, 100, max_bytes=100 + 3 * 1000 + 2 * 2)
    assert [len(p) for p in by_size] == [3, 3, 3, 1]
    assert [len(p) for p in plan_requests([(1, 50), (1, 10_000), (1, 50)], 10, max_bytes=500)] == [
        1, 1, 1]  # fmt: skip


@pytest.mark.parametrize(
    ("address", "problem"),
    [("", "the address is empty"), ("  ", "the address is empty"),
     ("jonah.harbourlights.example", "An email address must have an @-sign."),
     ("Olivia@Kangaroo.Example", None), ("olivia@kangaroo.example", None)],
)  # fmt: skip
def test_address_problem(address, problem):
    assert address_problem(address) == problem


@settings(max_examples=300, deadline=None)
@given(
    st.from_regex(
        r"\A[A-Za-z0-9_+-]{1,20}(\.[A-Za-z0-9_+-]{1,10}){0,2}"
        r"@([A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?\.){1,3}[A-Za-z]{2,8}\Z"
    )
)
def test_the_fast_path_only_passes_what_email_validator_accepts(address):
    """Plain addresses skip email-validator's slower checks; it must agree with each."""
    from email_validator import EmailNotValidError, validate_email

    from mm_orchestration.platform.outbox.addresses import plainly_valid as _plainly_valid

    if _plainly_valid(address):
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:  # pragma: no cover - the property under test
            pytest.fail(f"{address!r} passed the fast path but email-validator says: {exc}")


def test_outbox_commits_are_durable_whatever_the_database_default(conn, portal_db, database_url):
    from psycopg import sql

    name = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name))
    )
    portal_db.close()  # new sessions take the database's default
    with portal_db.connection() as other:
        assert other.execute("SHOW synchronous_commit").fetchone() == ("off",)
    with _durable(portal_db) as durable:
        assert durable.execute("SHOW synchronous_commit").fetchone() == ("on",)


@pytest.mark.parametrize("value", ["abc", "0", "-1", "301", "nan", "inf", "1_0", "\u0661\u0660"])
@pytest.mark.parametrize("name", ["MM_HTTP_CONNECT_TIMEOUT", "MM_HTTP_READ_TIMEOUT"])
def test_timeout_settings_are_checked_by_name(name, value):
    from mm_orchestration.platform.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=f"^{name} ") as refused:
        Settings.from_env({name: value})
    assert repr(value) not in str(refused.value) and "not shown" in str(refused.value)
    assert Settings.from_env({name: "2.5"}).__getattribute__(name[3:].lower()) == 2.5


def test_sentry_and_s3_get_the_timeouts(tmp_path):
    import sentry_sdk

    from mm_orchestration.monitoring.resource import Monitoring
    from mm_orchestration.platform.report_store import ReportStore

    store = ReportStore(s3_bucket="b", http_connect_timeout=2, http_read_timeout=7)
    config = store._s3().meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    Monitoring(dsn="https://k@o1.ingest.sentry.io/1", http_connect_timeout=2,
               http_read_timeout=7).start()  # fmt: skip
    try:
        transport = sentry_sdk.get_client().transport
        timeout = transport._pool.connection_pool_kw["timeout"]
        assert (timeout.connect_timeout, timeout.read_timeout) == (2, 7)
    finally:
        sentry_sdk.init(dsn=None)
        from mm_orchestration.monitoring import resource as monitoring

        monitoring._initialised.clear()


def test_recorder_reports_a_dropped_request_as_not_answered():
    recorder = SendGridRecorder()
    try:
        recorder.then(Reply(drop=True))
        mailer = Mailer(api_key="SG.k", api_host=recorder.url)
        with pytest.raises(SendError) as lost:
            mailer.send_template_batch("d-x", [TemplateRecipient("k", "a@kangaroo.example")])
        assert lost.value.unknown and not lost.value.transient
        assert [r.status for r in recorder.mail_requests] == [0]
    finally:
        recorder.close()


# -- a second trial: refusals, rate limits, trickles, spellings ---------------------------------


def expire_links_for(conn, emails, **cols):
    """A share link per address, expired an hour ago (one notice each, in this order)."""
    t = f.tenant(conn)
    asset = f.asset(conn, t)
    for email in emails:
        f.share_link(conn, t, asset, f.user(conn, t, email=email, **cols), NOW - timedelta(hours=1))


def run_expiry(portal_db, mailer, instance=None):
    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(DagsterInstance.ephemeral())
        return share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer},
            instance=instance,
            raise_on_error=False,
        )


def test_eight_culprits_in_a_thousand_fail_alone_and_the_rest_go(conn, digest, sendgrid):
    """A 400 naming nothing halves each refused part on its own: eight culprits spread
    through one request cost those eight, not the whole split."""
    many(conn, 1000)
    culprits = {f"person{i}@many.example" for i in (3, 130, 377, 500, 501, 640, 888, 999)}

    def rule(body):
        if any(p["to"][0]["email"] in culprits for p in body["personalizations"]):
            return Reply(400, {"errors": [{"message": "Bad Request", "field": None}]})
        return None

    sendgrid.rule = rule
    result = digest()
    assert not result.success
    assert counts(conn) == {"sent": 992, "failed": 1000 - 992}
    failed = {
        r[0]
        for r in conn.execute(
            "SELECT recipient FROM ops.notification_outbox WHERE status = 'failed'"
        )
    }
    assert failed == culprits
    assert len(sendgrid.accepted_recipients()) == 992  # each once
    # Each culprit costs at most two requests per level of halving (1,000 -> 1: ten levels).
    assert len(sendgrid.mail_requests) <= 8 * 2 * 10


def test_a_template_refused_without_a_field_stops_after_a_few_requests(conn, digest, sendgrid):
    """When every request is refused naming nothing, it is the request SendGrid refuses, not
    the people: after three lone refusals and no acceptance, delivery stops and all 1,000
    wait, pending, for the fix (the lone ones too); the run fails saying so."""
    many(conn, 1000)
    sendgrid.rule = lambda body: Reply(400, {"errors": [{"message": "Bad Request"}]})
    result = digest()
    assert not result.success
    assert counts(conn) == {"pending": 1000}
    assert len(sendgrid.mail_requests) <= 14
    description, metadata = failure_of(result)
    assert description.startswith("SendGrid refuses every request (SendGrid 400: Bad Request")
    assert "refused 4 requests in a row and accepted none" in description
    assert metadata["emails_failed"].value == 0  # the three refused alone went back too

    sendgrid.rule = None  # the template is fixed
    assert digest().success
    assert counts(conn) == {"sent": 1000}


@pytest.mark.parametrize(
    ("status", "field"),
    [(400, "from.email"), (400, "from"), (403, "from"), (401, None), (404, None)],
)
def test_a_refused_sender_or_key_stops_single_emails_and_holds_them(
    conn, portal_db, quick_mailer, sendgrid, status, field
):
    expire_links_for(conn, [f"owner{i}@kangaroo.example" for i in range(3)])
    message = "The from address does not match a verified Sender Identity."
    sendgrid.rule = lambda body: Reply(status, {"errors": [{"message": message, "field": field}]})
    result = run_expiry(portal_db, quick_mailer)
    assert not result.success
    assert len(sendgrid.mail_requests) == 1
    assert counts(conn) == {"pending": 3}
    description, _ = failure_of(result)
    assert f"SendGrid {status}: {message}" in description


def test_a_400_naming_the_content_fails_that_email_alone(conn, portal_db, quick_mailer, sendgrid):
    """A single email's subject and content are its own: the others still go."""
    expire_links_for(conn, ["a@kangaroo.example", "b@kangaroo.example", "c@kangaroo.example"])
    sendgrid.rule = lambda body: (
        Reply(400, {"errors": [{"message": "Invalid type.", "field": "content.0.value"}]})
        if body["personalizations"][0]["to"][0]["email"] == "b@kangaroo.example"
        else None
    )
    assert not run_expiry(portal_db, quick_mailer).success
    assert sorted(sendgrid.accepted_recipients()) == ["a@kangaroo.example", "c@kangaroo.example"]
    assert outbox(conn)["b@kangaroo.example"][:2] == ("failed", "SendGrid 400: Invalid type.")


def test_a_field_spelt_with_brackets_names_the_row(conn, digest, sendgrid):
    people(conn, [f"p{i}@kangaroo.example" for i in range(4)])
    sendgrid.then(
        Reply(
            400, {"errors": [{"message": "Invalid.", "field": "personalizations[2].to[0].email"}]}
        )
    )
    assert not digest().success
    assert [len(r.body["personalizations"]) for r in sendgrid.mail_requests] == [4, 3]
    assert counts(conn) == {"sent": 3, "failed": 1}
    third = sendgrid.mail_requests[0].body["personalizations"][2]["to"][0]["email"]
    assert outbox(conn)[third][:2] == ("failed", "SendGrid 400: Invalid.")


@pytest.mark.parametrize("status", [408, 425])
def test_a_408_or_425_is_tried_again(conn, digest, sendgrid, status):
    people(conn, ["olivia@kangaroo.example"])
    sendgrid.then(Reply(status, {"errors": [{"message": "try again"}]}))
    assert digest().success
    assert [r.status for r in sendgrid.mail_requests] == [status, 202]


def test_a_rate_limit_reset_beyond_the_wait_defers_at_once(quick_mailer, sendgrid):
    """A reset an hour away is not waited for (the run would hold for an hour): SendGrid
    cannot take it now, so the rows go back to pending for the op's retry at once."""
    reset = str(int(time.time()) + 3600)
    sendgrid.then(Reply(429, {"errors": [{"message": "too many"}]}, {"X-RateLimit-Reset": reset}))
    started = time.monotonic()
    with pytest.raises(SendError) as raised:
        quick_mailer.send_template_batch("d-x", [TemplateRecipient("k", "a@kangaroo.example")])
    assert time.monotonic() - started < 1
    assert raised.value.transient and not raised.value.unknown
    assert "rate limited for 3600 s more" in str(raised.value) or "3599 s" in str(raised.value)
    assert len(sendgrid.mail_requests) == 1


def test_a_trickled_answer_is_bounded_as_a_whole(sendgrid):
    """An answer arriving a byte every 0.3 s never trips a per-read timeout of 1 s; the
    whole answer is bounded by it all the same, and counts as outcome unknown."""
    mailer = Mailer(api_key="SG.k", api_host=sendgrid.url, read_timeout_seconds=1)
    sendgrid.then(Reply(202, trickle=0.3))
    started = time.monotonic()
    with pytest.raises(SendError) as raised:
        mailer.send_template_batch("d-x", [TemplateRecipient("k", "a@kangaroo.example")])
    assert time.monotonic() - started < 3
    assert raised.value.unknown
    assert "no whole answer within 1 s" in str(raised.value)
    assert len(sendgrid.mail_requests) == 1  # never sent again


def test_suppressions_match_in_any_case_and_any_spelling_of_the_domain(
    conn, portal_db, quick_mailer, sendgrid
):
    """Compared in Python, so the database's locale cannot matter: `É` folds to `é`, and
    an internationalised domain matches its ASCII (punycode) spelling both ways."""
    f.suppression(conn, "ÉLODIE@Bücher.example", reason="unsubscribe")
    f.suppression(conn, "Zoë@xn--caf-dma.example", reason="bounce")
    expire_links_for(
        conn,
        ["élodie@xn--bcher-kva.example", "zoë@CAFÉ.example", "  kept@kangaroo.example "],
    )
    result = run_expiry(portal_db, quick_mailer)
    assert result.success
    rows = outbox(conn)
    assert rows["élodie@xn--bcher-kva.example"][0] == "suppressed"
    assert rows["zoë@CAFÉ.example"][0] == "suppressed"
    # Surrounding spaces are a paste, not the address: it goes, without them.
    assert sendgrid.accepted_recipients() == ["kept@kangaroo.example"]


def test_rows_a_finished_run_left_sending_are_reported_at_once(
    conn, portal_db, quick_mailer, sendgrid, database_url, monkeypatch, capsys
):
    """A deliverer that died mid-send leaves its request's rows 'sending'. When Dagster
    knows that run has finished, the next delivery reports them as outcome unknown at
    once (the run fails, naming the key); rows of a run it cannot judge are listed as in
    flight by `outbox list --unknown` and counted, until the lease settles them."""
    expire_links_for(conn, ["gone@kangaroo.example", "live@kangaroo.example"])
    with DagsterInstance.ephemeral() as instance:
        first = run_expiry(portal_db, quick_mailer, instance)
        assert first.success and counts(conn) == {"sent": 2}
        conn.execute("UPDATE ops.notification_outbox SET status = 'pending'")
        conn.execute(
            "UPDATE ops.notification_outbox SET status = 'sending', claimed_at = now(), "
            "claimed_by = CASE WHEN recipient LIKE 'gone%%' THEN %s ELSE 'run-not-known' END",
            [first.run_id],
        )
        result = run_expiry(portal_db, quick_mailer, instance)
    assert not result.success
    assert counts(conn) == {"failed/unknown": 1, "sending": 1}
    description, metadata = failure_of(result)
    assert "outcome unknown" in description
    assert metadata["emails_in_flight_elsewhere"].value == 1
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli.main(["outbox", "list", "--unknown"]) == 0
    states = [line.split()[1] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert sorted(states) == ["sending", "unknown"]


@pytest.mark.parametrize("zone", ["Australia", "australia/perth", "Etc/Unknown", "../../etc"])
def test_a_zone_name_of_any_shape_never_costs_the_notice(
    conn, portal_db, quick_mailer, sendgrid, zone
):
    expire_links_for(conn, ["olivia@kangaroo.example"], timezone=zone)
    result = run_expiry(portal_db, quick_mailer)
    assert result.success
    (request,) = sendgrid.mail_requests
    text = request.body["content"][0]["value"]
    assert ("AWST" in text) if zone == "australia/perth" else ("AEDT" in text)


@pytest.mark.parametrize(
    "argv",
    [
        ["outbox", "resend", "--kind", "digst", "--since", "2026-11-01"],
        ["outbox", "resend", "--kind", "digest", "--since", "2026-W48"],
        ["outbox", "resend", "--kind", "digest", "--since", "20261101"],
        ["outbox", "list", "--kind", "digst"],
    ],
)
def test_outbox_arguments_are_checked(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    (refusal,) = json_lines(capsys.readouterr().err, "mm-jobs outbox")
    assert "argument --" in refusal["event"]


def test_the_sdk_never_logs_the_api_key_even_at_debug(sendgrid, caplog):
    """python_http_client writes each request's headers, Authorization included, at DEBUG."""
    import logging

    mailer = Mailer(api_key="SG.secret-key-123", api_host=sendgrid.url)
    with caplog.at_level(logging.DEBUG):
        mailer.send_template_batch("d-x", [TemplateRecipient("k", "a@kangaroo.example")])
    assert len(sendgrid.mail_requests) == 1
    assert "SG.secret-key-123" not in caplog.text


# -- a third trial: redirects, streaks, stale digests, our own contacts ------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308, 300, 304])
def test_a_redirect_is_never_followed_nor_taken_for_acceptance(conn, digest, sendgrid, status):
    """A 3xx means SENDGRID_API_HOST is not SendGrid's API: nothing was accepted, the key
    never goes to the Location's host, and the digests wait for the fix."""
    people(conn, ["olivia@kangaroo.example", "jack@kangaroo.example"])
    sendgrid.rule = lambda body: Reply(status, None, {"Location": "http://127.0.0.1:9/steal"})
    result = digest()
    assert not result.success
    assert len(sendgrid.requests) == 1  # the redirect was not followed anywhere
    assert counts(conn) == {"pending": 2}
    description, _ = failure_of(result)
    assert f"SendGrid {status}: a redirect to http://127.0.0.1:9/steal" in description


def test_three_culprits_first_cost_three_rows_not_the_batch(conn, digest, sendgrid):
    """Refused alone three times in a row, the next request is a probe: accepted, the
    three were the rows' own (they fail) and the rest go."""
    many(conn, 20)
    culprits: list[str] = []

    def rule(body):
        emails = [p["to"][0]["email"] for p in body["personalizations"]]
        if not culprits:
            culprits.extend(emails[:3])
        if set(emails) & set(culprits):
            return Reply(400, {"errors": [{"message": "Bad Request"}]})
        return None

    sendgrid.rule = rule
    assert not digest().success
    assert counts(conn) == {"sent": 17, "failed": 3}
    assert sorted(sendgrid.accepted_recipients()) == sorted(
        e for e in (f"person{i}@many.example" for i in range(1, 21)) if e not in culprits
    )


def test_every_request_refused_after_one_accepted_stops_within_a_few(conn, digest, sendgrid):
    many(conn, 2000)
    sendgrid.rule = lambda body: (
        Reply(400, {"errors": [{"message": "Bad Request"}]})
        if len([r for r in sendgrid.mail_requests if r.status == 202]) >= 1
        else None
    )
    assert not digest().success
    assert len(sendgrid.mail_requests) <= 1 + 15
    assert counts(conn) == {"sent": 1000, "pending": 1000}


def test_single_emails_refused_alike_are_held_with_a_readable_reason(
    conn, portal_db, quick_mailer, sendgrid
):
    expire_links_for(conn, [f"owner{i}@kangaroo.example" for i in range(8)])
    sendgrid.rule = lambda body: Reply(400, None)  # no body at all
    result = run_expiry(portal_db, quick_mailer)
    assert not result.success
    assert counts(conn) == {"pending": 8}
    assert len(sendgrid.mail_requests) == 4  # three alone, then the probe
    description, _ = failure_of(result)
    assert "SendGrid 400: (no error message)" in description


def test_lost_answers_stop_the_run_without_retrying_it(conn, digest, sendgrid, instance):
    many(conn, 3000)
    sendgrid.rule = lambda body: Reply(drop=True)
    result = digest()
    assert not result.success
    retries = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert retries == []
    assert len(sendgrid.mail_requests) == 2
    assert counts(conn) == {"failed/unknown": 2000, "pending": 1000}
    description, _ = failure_of(result)
    assert "and 1995 more" in description  # the count, not the keys shown
    assert "SendGrid lost 2 answers in a row: delivery stopped" in description


def test_a_digest_held_past_its_grace_expires_and_is_never_sent_stale(
    conn, portal_db, quick_mailer, job_settings, sendgrid, instance
):
    """A revoked key holds the 29 Nov digest; the key is fixed on 30 Nov: that day's digest
    goes, the one of the day before expires (counted as missed), never sent a day late."""
    (olivia,) = people(conn, ["olivia@kangaroo.example"])

    def run(now: datetime):
        return notification_digest.execute_in_process(
            resources={"portal_db": portal_db, "mailer": quick_mailer,
                       "job_settings": job_settings},
            run_config={"ops": {"queue_due_digests": {"config": {"now": now.isoformat()}}}},
            instance=instance,
            raise_on_error=False,
        )  # fmt: skip

    sendgrid.rule = lambda body: Reply(401, {"errors": [{"message": "revoked"}]})
    assert not run(REF - timedelta(days=1)).success
    assert counts(conn) == {"pending": 1}
    sendgrid.rule = None
    assert run(REF).success
    nov29, nov30 = (
        "2026-11-28T13:00:00Z/2026-11-29T13:00:00Z",
        "2026-11-29T13:00:00Z/2026-11-30T13:00:00Z",
    )
    assert sendgrid.accepted_keys() == [f"digest:{olivia}:{nov30}"]
    assert counts(conn) == {"expired": 1, "sent": 1}
    outcomes = dict(conn.execute("SELECT period, outcome FROM ops.digest_periods").fetchall())
    assert outcomes == {nov29: "missed", nov30: "queued"}


def test_mail_to_our_own_suppressed_contact_fails_rather_than_vanishing(
    conn, portal_db, quick_mailer, sendgrid
):
    from mm_orchestration.platform.outbox import deliver_pending, enqueue
    from mm_orchestration.platform.outbox.mailer import Email

    f.suppression(conn, "RELIABILITY@motionmavericks.example", reason="bounce")
    enqueue(conn, "alert:1", "alert", "reliability@motionmavericks.example", {"subject": "s"})
    report = deliver_pending(
        portal_db, quick_mailer, ["alert"],
        lambda key, row: Email(key, row["recipient"], "s", "t"), "run-1", must_reach=True,
    )  # fmt: skip
    assert (report.failed, report.suppressed) == (1, 0)
    error = conn.execute("SELECT status, last_error FROM ops.notification_outbox").fetchone()
    assert error[0] == "failed" and "our own contact" in error[1]
    assert sendgrid.mail_requests == []


def test_outbox_list_shows_what_waits_and_why(conn, digest, sendgrid, database_url, capsys,
                                              monkeypatch):  # fmt: skip
    people(conn, ["olivia@kangaroo.example"])
    sendgrid.rule = lambda body: Reply(401, {"errors": [{"message": "revoked"}]})
    digest()
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli.main(["outbox", "list", "--kind", "digest"]) == 0
    (line, total) = capsys.readouterr().out.splitlines()
    assert line.split()[1] == "waiting" and "revoked" in line and total == "1 row(s)"


def test_internationalised_domains_are_sent_in_ascii(conn, portal_db, quick_mailer, sendgrid):
    expire_links_for(conn, ["olivia@Bücher.example"])
    assert run_expiry(portal_db, quick_mailer).success
    assert sendgrid.accepted_recipients() == ["olivia@xn--Bcher-kva.example".lower()]


@pytest.mark.parametrize("address", ["olivia@xn--zz.example", "jack@ab--cd.example"])
def test_labels_idna_reserves_take_the_slow_path(address):
    assert address_problem(address) is not None


@pytest.mark.parametrize("reset", ["0", "-5", "1e400", "nan", str(10**13)])
def test_a_useless_rate_limit_reset_backs_off_and_says_so_plainly(sendgrid, reset):
    mailer = Mailer(api_key="SG.k", api_host=sendgrid.url, backoff_seconds=0.05, max_attempts=3)
    sendgrid.rule = lambda body: Reply(
        429, {"errors": [{"message": "slow down"}]}, {"X-RateLimit-Reset": reset}
    )
    started = time.monotonic()
    with pytest.raises(SendError) as raised:
        mailer.send_template_batch("d-x", [TemplateRecipient("k", "a@kangaroo.example")])
    assert time.monotonic() - started >= 0.05 + 0.1  # backed off: never back to back
    assert raised.value.transient and str(raised.value) == "SendGrid 429 rate limited: slow down"


def test_suppression_cleanup_drops_an_address_sendgrid_refuses_and_deletes_the_rest(
    conn, portal_db, sendgrid
):
    from mm_orchestration.features.suppressions.job import notification_suppression_cleanup

    for i in range(3):
        f.suppression(conn, f"old{i}@x.example", reason="bounce", age=timedelta(days=40))

    def rule(body):
        if body and "old1@x.example" in body.get("emails", []):
            index = body["emails"].index("old1@x.example")
            return Reply(400, {"errors": [{"message": "invalid", "field": f"emails.{index}"}]})
        return None

    sendgrid.rule = rule
    mailer = Mailer(api_key="SG.k", api_host=sendgrid.url)
    with DagsterInstance.ephemeral() as instance:
        result = notification_suppression_cleanup.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer}, instance=instance
        )
    assert result.success
    assert [r.body["emails"] for r in sendgrid.requests] == [
        ["old0@x.example", "old1@x.example", "old2@x.example"],
        ["old0@x.example", "old2@x.example"],
    ]
    assert conn.execute("SELECT count(*) FROM portal.email_suppressions").fetchone() == (0,)
    details = conn.execute("SELECT details FROM ops.audit_log").fetchone()[0]
    assert (details["sendgrid_requests"], details["not_at_sendgrid"]) == (2, 1)


def test_an_alert_resent_after_fixing_the_contact_goes_to_the_new_address(
    conn, portal_db, quick_mailer, sendgrid, database_url, monkeypatch, capsys
):
    """An alert to a contact SendGrid refused: the setting is fixed, and `resend --to`
    sends it (same key) to the address now set; a bad --to is refused at once."""
    from mm_orchestration.platform.outbox import deliver_pending, enqueue
    from mm_orchestration.platform.outbox.mailer import Email

    enqueue(conn, "alert:1", "alert", "old-oncall@motionmavericks.example", {"subject": "s"})

    def deliver():
        return deliver_pending(
            portal_db, quick_mailer, ["alert"],
            lambda key, row: Email(key, row["recipient"], "s", "t"), "run-1", must_reach=True,
        )  # fmt: skip

    sendgrid.rule = lambda body: Reply(
        400, {"errors": [{"message": "Does not contain a valid address.",
                          "field": "personalizations.0.to.0.email"}]}
    )  # fmt: skip
    assert deliver().failed == 1
    sendgrid.rule = None
    monkeypatch.setenv("DATABASE_URL", database_url)
    with pytest.raises(SystemExit):
        cli.main(["outbox", "resend", "--kind", "alert", "--since", "2000-01-01",
                  "--to", "on call@motionmavericks.example"])  # fmt: skip
    assert "is not an address" in capsys.readouterr().err
    assert cli.main(["outbox", "resend", "--kind", "alert", "--since", "2000-01-01",
                     "--to", "oncall@motionmavericks.example"]) == 0  # fmt: skip
    assert deliver().sent == 1
    assert sendgrid.accepted_recipients() == ["oncall@motionmavericks.example"]
    assert sendgrid.accepted_keys() == ["alert:1"]
    details = conn.execute(
        "SELECT details FROM ops.audit_log WHERE action = 'outbox_resend'"
    ).fetchone()[0]
    assert details["to"] == "oncall@motionmavericks.example"
