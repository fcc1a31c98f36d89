"""A run killed midway never sends an email twice and never loses a row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance

from mm_orchestration.features.share_links.job import share_link_expiry
from mm_orchestration.platform.ledger import TRIGGER_TAG, WINDOW_TAG
from tests import factories as f
from tests.run_job_in_subprocess import kill_at_request
from tests.sendgrid_server import Reply

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

NOW = datetime.now(UTC)


def _run(portal_db, mailer, tags=None):
    with DagsterInstance.ephemeral() as instance:
        return share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer},
            instance=instance,
            tags=tags or {},
            raise_on_error=False,
        )


def test_killed_while_sending_never_resends(
    conn, database_url, portal_db, mailer, sendgrid, project_root
):
    t = f.tenant(conn)
    owner = f.user(conn, t, email="olivia@kangaroo.example")
    link = f.share_link(conn, t, f.asset(conn, t), owner, NOW - timedelta(minutes=1))
    sendgrid.then(Reply(202, delay=30))  # SendGrid takes the message, then hangs
    kill_at_request(database_url, sendgrid, project_root, 1)

    # The link change committed; the email is claimed and its outcome unknown.
    assert (
        conn.execute("SELECT status FROM portal.share_links WHERE id = %s", [link]).fetchone()[0]
        == "expired"
    )
    assert conn.execute("SELECT status FROM ops.notification_outbox").fetchone()[0] == "sending"

    # A rerun does not send it again...
    assert _run(portal_db, mailer).success
    assert sendgrid.arrivals == 1
    # ...and once the claim's lease is over, the row is failed "outcome unknown" with its key
    # and the run that finds it fails, so an operator is alerted and looks it up in SendGrid.
    conn.execute("UPDATE ops.notification_outbox SET claimed_at = now() - interval '1 hour'")
    settled = _run(portal_db, mailer)
    assert not settled.success
    description, metadata = failure_of(settled)
    assert metadata["emails_outcome_unknown"].value == 1
    key = conn.execute("SELECT idempotency_key FROM ops.notification_outbox").fetchone()[0]
    assert "1 expiry email(s) failed for good (1 outcome unknown)" in description
    assert key in description and key in metadata["outcome_unknown_keys"].value
    status, error, unknown = conn.execute(
        "SELECT status, last_error, outcome_unknown FROM ops.notification_outbox"
    ).fetchone()
    assert status == "failed" and unknown and "outcome unknown" in error
    assert f"idempotency_key={key}" in error
    assert sendgrid.arrivals == 1
    # Known now: the next run succeeds and still sends nothing.
    assert _run(portal_db, mailer).success and sendgrid.arrivals == 1


def failure_of(result):
    """The failed op's own description and metadata (DeliveryFailed / DeliveryIncomplete)."""
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = event.step_failure_data.user_failure_data
    return data.description, data.metadata


def test_killed_run_leaves_no_stuck_window(conn, portal_db, mailer, sendgrid):
    """A 'running' ledger row whose process died is marked abandoned and the window reruns."""
    t = f.tenant(conn)
    f.share_link(conn, t, f.asset(conn, t), f.user(conn, t), NOW - timedelta(minutes=1))
    window = "2026-11-28T21:00:00Z"
    conn.execute(
        "INSERT INTO ops.job_runs (job_name, window_key, run_id, status) "
        "VALUES ('share-link-expiry', %s, 'dead-run', 'running')",
        [window],
    )
    result = _run(portal_db, mailer, {WINDOW_TAG: window, TRIGGER_TAG: "schedule"})
    assert result.success
    rows = conn.execute("SELECT run_id, status, error FROM ops.job_runs ORDER BY id").fetchall()
    assert rows[0] == ("dead-run", "failed", "abandoned: the run stopped before recording its end")
    assert rows[1][1] == "succeeded"
    assert len(sendgrid.accepted_recipients()) == 1


def test_window_held_by_a_live_run_is_skipped(conn, database_url, portal_db, mailer):
    window = "2026-11-28T21:15:00Z"
    with conn.cursor() as cur:  # a live run of the same window holds the advisory lock
        cur.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"share-link-expiry/{window}"]
        )
        result = _run(portal_db, mailer, {WINDOW_TAG: window, TRIGGER_TAG: "schedule"})
        cur.execute(
            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [f"share-link-expiry/{window}"]
        )
    assert result.success
    status, error = conn.execute("SELECT status, error FROM ops.job_runs").fetchone()
    assert status == "skipped" and "another run" in error


def test_window_lock_is_held_on_the_direct_host_when_there_is_one(conn, database_url):
    """Behind a transaction-mode pooler a session lock could be released on another server
    connection; with DATABASE_DIRECT_URL the ledger takes it on an unpooled connection,
    and the pool shrinks by one so a run still uses at most five connections."""
    from mm_orchestration.platform.database import PortalDatabase
    from mm_orchestration.platform.ledger import Window, claim

    db = PortalDatabase(url=database_url, direct_url=database_url)
    window = Window("share-link-expiry", "2026-11-28T21:30:00Z", "run-1", "schedule", None)
    try:
        with claim(db, window) as claimed:
            assert not claimed.skipped
            holders = conn.execute(
                "SELECT a.application_name FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted"
            ).fetchall()
            assert holders == [("mm-orchestration-session",)]  # not a pooled connection
            with db.connection():
                assert db._get_pool().max_size == 4
        assert conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT status FROM ops.job_runs").fetchone() == ("succeeded",)
    finally:
        db.close()


def test_a_failed_runs_ledger_error_masks_a_password_and_keeps_a_nul(conn, database_url):
    """The ledger's error is shown in the console and job health: a password quoted by a
    driver is masked, and a NUL (which PostgreSQL's text refuses) does not lose the row's
    ending."""
    from mm_orchestration.platform.database import PortalDatabase
    from mm_orchestration.platform.ledger import Window, claim

    db = PortalDatabase(url=database_url)
    window = Window("share-link-expiry", "2026-11-28T21:30:00Z", "run-9", "schedule", None)
    try:
        with pytest.raises(RuntimeError), claim(db, window):
            raise RuntimeError("no route to postgresql://jobs:hunter2@db/portal\x00")
    finally:
        db.close()
    assert conn.execute("SELECT status, error FROM ops.job_runs").fetchone() == (
        "failed",
        "RuntimeError: no route to postgresql://jobs:***@db/portal\\u0000",
    )
