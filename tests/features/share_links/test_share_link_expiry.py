"""share-link-expiry against a real PostgreSQL and the real sendgrid SDK."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from dagster import DagsterInstance

from mm_orchestration.features.share_links.job import expire_due_links, share_link_expiry
from mm_orchestration.platform.ledger import TRIGGER_TAG, WINDOW_TAG
from mm_orchestration.platform.outbox.mailer import Mailer
from tests import factories as f
from tests.sendgrid_server import Reply

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

NOW = datetime.now(UTC)


def run(
    portal_db: Any,
    mailer: Any,
    tags: dict[str, str] | None = None,
    force: bool = False,
    instance: DagsterInstance | None = None,
) -> Any:
    with (instance and _nullctx(instance)) or DagsterInstance.ephemeral() as inst:
        return share_link_expiry.execute_in_process(
            resources={"portal_db": portal_db, "mailer": mailer},
            run_config={"ops": {"expire_due_share_links": {"config": {"force": force}}}},
            tags=tags or {},
            instance=inst,
            raise_on_error=False,
        )


class _nullctx:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *a: Any) -> None:
        pass


@pytest.fixture
def agency(conn: psycopg.Connection) -> dict[str, Any]:
    t = f.tenant(conn)
    owner = f.user(conn, t, email="olivia@kangaroo.example", timezone="Australia/Sydney")
    a = f.asset(conn, t, title="Summer Campaign - final cut")
    return {"tenant": t, "owner": owner, "asset": a}


def links(conn: psycopg.Connection) -> dict[Any, tuple[str, Any]]:
    return {
        r[0]: (r[1], r[2])
        for r in conn.execute("SELECT id, status, expired_at FROM portal.share_links")
    }


def live_tokens(conn: psycopg.Connection, link: Any) -> int:
    row = conn.execute(
        "SELECT count(*) FROM portal.share_link_tokens "
        "WHERE share_link_id = %s AND revoked_at IS NULL",
        [link],
    ).fetchone()
    assert row
    return int(row[0])


def test_due_links_expire_tokens_revoke_and_owner_is_emailed_once(
    conn, portal_db, mailer, sendgrid, agency
):
    due = f.share_link(
        conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(minutes=5)
    )
    not_due = f.share_link(
        conn, agency["tenant"], agency["asset"], agency["owner"], NOW + timedelta(days=2)
    )
    revoked = f.share_link(
        conn,
        agency["tenant"],
        agency["asset"],
        agency["owner"],
        NOW - timedelta(days=1),
        status="revoked",
    )
    already = f.share_link(
        conn,
        agency["tenant"],
        agency["asset"],
        agency["owner"],
        NOW - timedelta(days=3),
        status="expired",
    )

    result = run(portal_db, mailer)

    assert result.success
    state = links(conn)
    assert state[due][0] == "expired" and state[due][1] is not None
    assert state[not_due] == ("active", None)
    assert state[revoked] == ("revoked", None)
    assert state[already] == ("expired", None)
    assert live_tokens(conn, due) == 0
    assert live_tokens(conn, not_due) == 2 and live_tokens(conn, revoked) == 2
    assert sendgrid.accepted_recipients() == ["olivia@kangaroo.example"]
    body = sendgrid.mail_requests[0].body
    assert body["subject"] == "Share link expired: Summer Campaign - final cut"
    text = body["content"][0]["value"]
    expected_local = (
        (NOW - timedelta(minutes=5))
        .astimezone(__import__("zoneinfo").ZoneInfo("Australia/Sydney"))
        .strftime("%-d %b %Y, %-I:%M %p")
    )
    assert "Summer Campaign - final cut" in text and expected_local in text
    assert (
        body["personalizations"][0]["custom_args"]["idempotency_key"] == f"share-link-expired:{due}"
    )
    outbox = conn.execute(
        "SELECT status, provider_message_id, tenant_id FROM ops.notification_outbox"
    ).fetchall()
    assert len(outbox) == 1 and outbox[0][0] == "sent" and outbox[0][1]
    assert outbox[0][2] == agency["tenant"]

    again = run(portal_db, mailer)
    assert again.success
    assert len(sendgrid.mail_requests) == 1
    assert again.output_for_node("expire_due_share_links") == 0


def test_link_expiring_exactly_now_is_due(conn, database_url, agency):
    with psycopg.connect(database_url) as tx:  # one transaction: now() is the same instant
        link = tx.execute(
            "INSERT INTO portal.share_links (tenant_id, media_asset_id, created_by, expires_at)"
            " VALUES (%s, %s, %s, now()) RETURNING id",
            [agency["tenant"], agency["asset"], agency["owner"]],
        ).fetchone()[0]
        counts = expire_due_links(tx)
    assert counts.links_expired == 1 and counts.emails_queued == 1
    assert links(conn)[link][0] == "expired"


def test_link_without_tokens_still_expires_and_notifies(conn, portal_db, mailer, sendgrid, agency):
    link = f.share_link(
        conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1), tokens=0
    )
    assert run(portal_db, mailer).success
    assert links(conn)[link][0] == "expired"
    assert sendgrid.accepted_recipients() == ["olivia@kangaroo.example"]


def test_suppressed_owner_is_never_emailed(conn, portal_db, mailer, sendgrid, agency):
    f.suppression(conn, "Olivia@Kangaroo.example", reason="unsubscribe")
    link = f.share_link(
        conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1)
    )
    assert run(portal_db, mailer).success
    assert links(conn)[link][0] == "expired"
    assert sendgrid.mail_requests == []
    status, error = conn.execute(
        "SELECT status, last_error FROM ops.notification_outbox"
    ).fetchone()
    assert status == "suppressed" and "unsubscribe" in error


def test_deactivated_owner_gets_no_email_but_link_expires(conn, portal_db, mailer, sendgrid):
    t = f.tenant(conn)
    gone = f.user(conn, t, deactivated_at=NOW - timedelta(days=3))
    link = f.share_link(conn, t, f.asset(conn, t), gone, NOW - timedelta(hours=1))
    assert run(portal_db, mailer).success
    assert links(conn)[link][0] == "expired"
    assert live_tokens(conn, link) == 0
    assert conn.execute("SELECT count(*) FROM ops.notification_outbox").fetchone()[0] == 0
    assert sendgrid.mail_requests == []


def test_concurrent_runs_send_each_email_once(conn, portal_db, mailer, sendgrid, agency):
    owners = [f.user(conn, agency["tenant"], email=f"owner{i}@kangaroo.example") for i in range(30)]
    for o in owners:
        f.share_link(conn, agency["tenant"], agency["asset"], o, NOW - timedelta(minutes=1))
    results: list[Any] = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        barrier.wait()
        results.append(run(portal_db, mailer))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.success for r in results)
    recipients = sendgrid.accepted_recipients()
    assert sorted(recipients) == sorted(f"owner{i}@kangaroo.example" for i in range(30))
    assert (
        conn.execute("SELECT count(*) FROM portal.share_links WHERE status='expired'").fetchone()[0]
        == 30
    )
    expired_total = sum(r.output_for_node("expire_due_share_links") for r in results)
    assert expired_total == 30


def test_sendgrid_500_then_202_delivers_once(conn, portal_db, mailer, sendgrid, agency):
    f.share_link(conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1))
    sendgrid.then(Reply(500, {"errors": [{"message": "internal"}]}), Reply(202))
    assert run(portal_db, mailer).success
    assert [r.status for r in sendgrid.mail_requests] == [500, 202]
    assert sendgrid.accepted_recipients() == ["olivia@kangaroo.example"]
    assert conn.execute("SELECT status, attempts FROM ops.notification_outbox").fetchone() == (
        "sent",
        1,
    )


def test_429_waits_for_rate_limit_reset_then_sends(conn, portal_db, mailer, sendgrid, agency):
    f.share_link(conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1))
    reset = str(int(datetime.now(UTC).timestamp()) + 1)
    sendgrid.then(Reply(429, {"errors": [{"message": "too many"}]}, {"X-RateLimit-Reset": reset}))
    assert run(portal_db, mailer).success
    assert [r.status for r in sendgrid.mail_requests] == [429, 202]


def test_400_fails_only_that_row_and_others_go(conn, portal_db, mailer, sendgrid, agency):
    bad = f.user(conn, agency["tenant"], email="bad@kangaroo.example")
    f.share_link(conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1))
    f.share_link(conn, agency["tenant"], agency["asset"], bad, NOW - timedelta(hours=1))
    sendgrid.refuse = {"bad@kangaroo.example"}  # looks valid to us; SendGrid says no
    result = run(portal_db, mailer)
    # The other owner is emailed, but a refused address is failed for good: the run fails
    # (after sending everything else), so the failure sensor alerts.
    assert not result.success
    rows = dict(
        conn.execute(
            "SELECT recipient, status || ':' || coalesce(last_error, '') "
            "FROM ops.notification_outbox"
        ).fetchall()
    )
    assert rows["olivia@kangaroo.example"] == "sent:"
    assert rows["bad@kangaroo.example"] == "failed:SendGrid 400: Does not contain a valid address."
    assert sendgrid.accepted_recipients() == ["olivia@kangaroo.example"]
    assert len(sendgrid.mail_requests) == 2


def test_sendgrid_down_keeps_email_pending_and_fails_the_run(
    conn, portal_db, mailer, sendgrid, agency
):
    f.share_link(conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1))
    sendgrid.rule = lambda body: Reply(503, {"errors": [{"message": "maintenance"}]})
    impatient = Mailer(
        api_key="SG.test-key", api_host=sendgrid.url, backoff_seconds=0.01, max_attempts=2
    )
    result = run(portal_db, impatient)
    assert not result.success
    status, attempts, error = conn.execute(
        "SELECT status, attempts, last_error FROM ops.notification_outbox"
    ).fetchone()
    assert status == "pending" and "503" in error
    assert attempts == 2  # the first try and the op's one retry (from the inventory)
    assert len(sendgrid.mail_requests) == 4  # two SendGrid calls per try
    # The link itself is expired, and the next run delivers once SendGrid is back.
    sendgrid.rule = None
    assert run(portal_db, mailer).success
    assert sendgrid.accepted_recipients() == ["olivia@kangaroo.example"]


def test_scheduled_window_runs_once_unless_forced(conn, portal_db, mailer, agency):
    tags = {WINDOW_TAG: "2026-11-28T20:15:00Z", TRIGGER_TAG: "schedule"}
    assert run(portal_db, mailer, tags).success
    assert run(portal_db, mailer, tags).success
    assert run(portal_db, mailer, tags, force=True).success
    rows = conn.execute("SELECT window_key, status, error FROM ops.job_runs ORDER BY id").fetchall()
    assert [r[1] for r in rows] == ["succeeded", "skipped", "succeeded"]
    assert rows[1][2].startswith("window already succeeded in run ")
    assert rows[2][0].startswith("2026-11-28T20:15:00Z#forced:")
    assert all(r[0] != rows[0][0] for r in rows[2:])


def test_ledger_records_duration_rows_and_trigger(conn, portal_db, mailer, agency):
    for _ in range(3):
        f.share_link(
            conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1)
        )
    result = run(portal_db, mailer)
    row = conn.execute(
        "SELECT job_name, window_key, run_id, status, duration_ms, rows_affected,"
        " trigger, actor, finished_at IS NOT NULL FROM ops.job_runs"
    ).fetchone()
    assert row[0] == "share-link-expiry"
    assert row[1] == f"manual:{result.run_id}" and row[2] == result.run_id
    assert row[3] == "succeeded" and row[4] >= 0 and row[5] == 3
    assert row[6] == "manual" and row[7] is None and row[8]  # no person named: no made-up one


def test_structured_logs_carry_job_fields_and_no_full_address(
    conn, portal_db, mailer, agency, capsys
):
    f.share_link(conn, agency["tenant"], agency["asset"], agency["owner"], NOW - timedelta(hours=1))
    result = run(portal_db, mailer)
    import json

    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    finished = [entry for entry in lines if entry["event"] == "job.succeeded"]
    assert finished and finished[0]["jobName"] == "share-link-expiry"
    assert finished[0]["runId"] == result.run_id
    assert finished[0]["status"] == "succeeded" and "durationMs" in finished[0]
    sent = [entry for entry in lines if entry["event"] == "email.sent"]
    assert sent and sent[0]["tenantId"] == str(agency["tenant"])
    everything = json.dumps(lines)
    assert "olivia@kangaroo.example" not in everything
    assert "o***@kangaroo.example" in everything
    assert "SG.test-key" not in everything
