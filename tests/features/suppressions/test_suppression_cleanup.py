"""notification-suppression-cleanup against a real PostgreSQL and the SendGrid stand-in."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from dagster import RetryPolicy, job

from mm_orchestration.features.suppressions.job import (
    delete_old_bounce_suppressions,
    notification_suppression_cleanup,
)
from mm_orchestration.platform import inventory
from mm_orchestration.platform.outbox.mailer import Mailer
from tests import factories as f
from tests.conftest import run_job
from tests.sendgrid_server import Reply

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


@job
def fast_retry_job():
    """The cleanup with its one retry (from the inventory) but no 60 s wait before it."""
    delete_old_bounce_suppressions.with_retry_policy(
        RetryPolicy(max_retries=inventory.get("notification-suppression-cleanup").retries)
    )()


def seed_suppressions(conn):
    rows = {
        "old-bounce@x.example": ("bounce", 31),
        "Old-Bounce-2@X.example": ("bounce", 45),
        "recent-bounce@x.example": ("bounce", 29),
        "unsub@x.example": ("unsubscribe", 400),
        "spam@x.example": ("spam_report", 400),
        "invalid@x.example": ("invalid", 400),
    }
    for email, (reason, days) in rows.items():
        f.suppression(conn, email, reason=reason, age=timedelta(days=days))
    return rows


def remaining(conn):
    return sorted(r[0] for r in conn.execute("SELECT email FROM portal.email_suppressions"))


def test_only_bounces_older_than_30_days_go_and_the_audit_is_hashed(conn, portal_db, tmp_path):
    seed_suppressions(conn)
    mailer = Mailer(mail_dir=str(tmp_path))  # no SendGrid key: local deletion only
    result = run_job(notification_suppression_cleanup, {"portal_db": portal_db, "mailer": mailer})
    assert result.success
    assert remaining(conn) == [
        "invalid@x.example",
        "recent-bounce@x.example",
        "spam@x.example",
        "unsub@x.example",
    ]
    (audit,) = conn.execute(
        "SELECT actor, action, job_name, run_id, details FROM ops.audit_log"
    ).fetchall()
    actor, action, job_name, run_id, details = audit
    assert (actor, action, job_name) == (
        "unknown",  # launched by nobody in particular: never a made-up name
        "delete_bounce_suppressions",
        "notification-suppression-cleanup",
    )
    assert run_id == result.run_id
    assert details["count"] == 2 and details["sendgrid_requests"] == 0
    assert details["sha256"] == sorted(
        hashlib.sha256(e.encode()).hexdigest()
        for e in ("old-bounce@x.example", "old-bounce-2@x.example")
    )
    assert "bounce@x.example" not in json.dumps(details).lower()


def test_sendgrid_bounce_list_is_cleaned_in_the_same_step(conn, portal_db, mailer, sendgrid):
    seed_suppressions(conn)
    result = run_job(notification_suppression_cleanup, {"portal_db": portal_db, "mailer": mailer})
    assert result.success
    (request,) = sendgrid.requests
    assert (request.method, request.path) == ("DELETE", "/v3/suppression/bounces")
    assert request.body == {"emails": ["old-bounce-2@x.example", "old-bounce@x.example"]}
    assert (
        conn.execute("SELECT details->>'sendgrid_requests' FROM ops.audit_log").fetchone()[0] == "1"
    )


def test_a_malformed_old_bounce_is_forgotten_here_and_never_sent_to_sendgrid(
    conn, portal_db, mailer, sendgrid
):
    """SendGrid refuses a whole batch for one malformed address; it never bounced at
    SendGrid either, so it is deleted locally only, counted, and the rest go."""
    seed_suppressions(conn)
    f.suppression(conn, "no-at-sign.example", reason="bounce", age=timedelta(days=31))
    f.suppression(conn, " spaced@x.example ", reason="bounce", age=timedelta(days=31))
    result = run_job(notification_suppression_cleanup, {"portal_db": portal_db, "mailer": mailer})
    assert result.success
    (request,) = sendgrid.requests
    assert request.body == {
        "emails": ["old-bounce-2@x.example", "old-bounce@x.example", "spaced@x.example"]
    }
    details = conn.execute("SELECT details FROM ops.audit_log").fetchone()[0]
    assert (details["count"], details["not_at_sendgrid"]) == (4, 1)


def test_sendgrid_failure_rolls_the_deletion_back(conn, portal_db, sendgrid):
    seed_suppressions(conn)
    before = remaining(conn)
    sendgrid.rule = lambda body: Reply(503, {"errors": [{"message": "down"}]})
    mailer = Mailer(api_key="SG.k", api_host=sendgrid.url, backoff_seconds=0.01, max_attempts=2)
    result = run_job(fast_retry_job, {"portal_db": portal_db, "mailer": mailer})
    assert not result.success
    assert remaining(conn) == before  # nothing deleted locally
    assert conn.execute("SELECT count(*) FROM ops.audit_log").fetchone()[0] == 0
    statuses = [r[0] for r in conn.execute("SELECT status FROM ops.job_runs ORDER BY id")]
    assert statuses == ["failed", "failed"]  # the first try and its one retry, both recorded
    error = conn.execute("SELECT error FROM ops.job_runs LIMIT 1").fetchone()[0]
    assert "503" in error
