"""Dead letters escalate folded: one email per run, however many die (a Mux outage kills
hundreds together), one audit entry per letter, exactly once across crashes and retries."""

from __future__ import annotations

import pytest

from mm_orchestration.features.mux_dlq import replay as replay_module
from mm_orchestration.features.mux_dlq.job import mux_webhook_retry, render_dead_letter_email
from mm_orchestration.features.mux_dlq.replay import (
    LETTERS_LISTED,
    fold_escalations,
    release_escalations,
    replay_due,
)
from mm_orchestration.platform.database import PortalDatabase
from tests.conftest import run_job
from tests.mux_factory import dead_letter

RELIABILITY = "reliability@motionmavericks.com.au"


@pytest.fixture
def mux_batch() -> dict[str, int]:
    return {"batch_size": 25}


def dying(conn, n, prefix="evt-outage"):
    """`n` letters on their last attempt, each with an envelope that cannot be read."""
    return [
        dead_letter(
            conn,
            {"type": "video.asset.ready", "id": f"{prefix}-{i}", "created_at": "not a date"},
            attempts=4,
        )
        for i in range(n)
    ]


def body(request):
    return request.body["content"][0]["value"]


def test_an_outage_that_kills_sixty_letters_is_one_email(conn, resources, sendgrid):
    ids = dying(conn, 60)
    assert run_job(mux_webhook_retry, resources).success  # three batches of 25
    assert conn.execute(
        "SELECT count(*) FROM portal.mux_webhook_dlq WHERE status = 'dead'"
        " AND escalated_at IS NOT NULL"
    ).fetchone() == (60,)
    audits = conn.execute(
        "SELECT (details->>'dlq_id')::bigint FROM ops.audit_log"
        " WHERE action = 'escalate_dead_letter' ORDER BY 1"
    ).fetchall()
    assert [a[0] for a in audits] == ids  # still one audit entry per letter
    assert sendgrid.accepted_recipients() == [RELIABILITY]
    (request,) = sendgrid.mail_requests
    assert request.body["subject"].startswith("60 Mux events are dead")
    text = body(request)
    assert text.count("not a date") == LETTERS_LISTED
    assert "evt-outage-0 " in text and "... and 40 more" in text
    assert "mm-jobs dlq list --status dead" in text
    for _ in range(2):  # nothing dies again, nothing is sent again
        assert run_job(mux_webhook_retry, resources).success
    assert len(sendgrid.mail_requests) == 1


def test_a_crash_between_batches_and_the_retry_still_make_one_email(
    conn, portal_db: PortalDatabase, resources, monkeypatch
):
    dying(conn, 60)
    real_batch = replay_module._Replay.batch
    calls = []

    def crash_on_the_second(self, letters, now):
        calls.append(len(letters))
        if len(calls) == 2:
            real_batch(self, letters, now)
            raise RuntimeError("killed mid-batch")  # its transaction rolls back
        real_batch(self, letters, now)

    monkeypatch.setattr(replay_module._Replay, "batch", crash_on_the_second)
    mux = resources["mux"]
    with portal_db.connection() as c, pytest.raises(RuntimeError):
        replay_due(c, mux, "run-1", RELIABILITY)
    monkeypatch.setattr(replay_module._Replay, "batch", real_batch)
    with portal_db.connection() as c:  # the op's retry: same run
        report = replay_due(c, mux, "run-1", RELIABILITY)
    assert report.dead == 35
    rows = conn.execute(
        "SELECT idempotency_key, payload->>'count', jsonb_array_length(payload->'letters'),"
        " next_attempt_at = 'infinity' FROM ops.notification_outbox"
    ).fetchall()
    assert rows == [("mux-dlq-dead:run:run-1", "60", LETTERS_LISTED, True)]  # held
    assert conn.execute(
        "SELECT count(*) FROM ops.audit_log WHERE action = 'escalate_dead_letter'"
    ).fetchone() == (60,)


def test_a_released_email_is_never_added_to(conn, portal_db: PortalDatabase):
    """A concurrent run's delivery released this run's email (it may be read for sending
    now): the run's later deaths go into an email of their own, none is lost."""
    first, second = dying(conn, 2)
    letter = {"event_type": "video.asset.ready", "attempts": 5, "last_error": "boom"}
    with portal_db.connection() as c:
        fold_escalations(c, "run-1", RELIABILITY, [{**letter, "dlq_id": first, "event_id": "a"}])
        assert release_escalations(c) == 1
        fold_escalations(c, "run-1", RELIABILITY, [{**letter, "dlq_id": second, "event_id": "b"}])
    rows = conn.execute(
        "SELECT idempotency_key, payload->'letters'->0->>'event_id', payload->>'count',"
        " next_attempt_at = 'infinity' FROM ops.notification_outbox ORDER BY id"
    ).fetchall()
    assert rows == [
        ("mux-dlq-dead:run:run-1", "a", "1", False),
        (f"mux-dlq-dead:run:run-1:{second}", "b", "1", True),
    ]


def test_a_requeued_letter_that_dies_again_is_escalated_again(conn, resources, sendgrid):
    (row,) = dying(conn, 1, "evt-again")
    assert run_job(mux_webhook_retry, resources).success
    conn.execute(
        "UPDATE portal.mux_webhook_dlq SET status = 'pending', attempts = 4,"
        " escalated_at = NULL, next_attempt_at = now() WHERE id = %s",
        [row],
    )  # `mm-jobs dlq requeue`, then four more failures
    assert run_job(mux_webhook_retry, resources).success
    subjects = [r.body["subject"] for r in sendgrid.mail_requests]
    assert subjects == ["Mux event evt-again-0 is dead after 5 attempts"] * 2


def test_an_email_queued_before_the_fold_still_renders():
    email = render_dead_letter_email(
        "mux-dlq-dead:evt-old",
        {
            "recipient": RELIABILITY,
            "dlq_id": 7,
            "event_id": "evt-old",
            "event_type": None,
            "attempts": 5,
            "last_error": "boom",
        },
    )
    assert email.subject == "Mux event evt-old is dead after 5 attempts"
    assert "#7  unknown type  evt-old  after 5 attempts: boom" in email.text
    assert "mm-jobs dlq show 7" in email.text
