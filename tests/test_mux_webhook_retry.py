"""mux-webhook-retry against a real PostgreSQL: every event type, failures, escalation."""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_orchestration.db import connect
from mm_orchestration.jobs.mux_webhook_retry import mux_webhook_retry, replay_due
from mm_orchestration.mux_events import BadSignature, verify_signature
from mm_orchestration.resources.mux import MuxWebhooks
from tests import factories as f
from tests.conftest import run_job
from tests.mux_factory import dead_letter, envelope, raw

T0 = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)


@pytest.fixture
def video(conn):
    t = f.tenant(conn)
    return f.asset(conn, t, title="Hero video", mux_upload_id="up-1", status="waiting")


@pytest.fixture
def resources(portal_db, mailer, job_settings):
    return {
        "portal_db": portal_db,
        "mailer": mailer,
        "job_settings": job_settings,
        "mux": MuxWebhooks(backoff_seconds=60),
    }


def asset_row(conn, video):
    return conn.execute(
        "SELECT status, mux_asset_id, duration_seconds, mux_playback_id, status_changed_at"
        " FROM portal.media_assets WHERE id = %s",
        [video],
    ).fetchone()


def dlq_rows(conn):
    return {
        r[0]: r[1:]
        for r in conn.execute("SELECT id, status, attempts, last_error FROM portal.mux_webhook_dlq")
    }


def test_every_event_type_is_applied_in_order(conn, video, resources):
    steps = [
        (
            envelope("video.upload.asset_created", "asset-1", T0, upload_id="up-1"),
            ("waiting", "asset-1", None, None, None),
        ),
        (
            envelope("video.asset.created", "asset-1", T0 + timedelta(seconds=1), "up-1"),
            ("preparing", "asset-1", None, None, T0 + timedelta(seconds=1)),
        ),
        (
            envelope(
                "video.asset.ready",
                "asset-1",
                T0 + timedelta(seconds=2),
                "up-1",
                status="ready",
                duration=62.4,
                playback_ids=[{"id": "pb-1", "policy": "signed"}],
            ),
            ("ready", "asset-1", 62.4, "pb-1", T0 + timedelta(seconds=2)),
        ),
        (
            envelope("video.asset.errored", "asset-1", T0 + timedelta(seconds=3), "up-1"),
            ("errored", "asset-1", 62.4, "pb-1", T0 + timedelta(seconds=3)),
        ),
        (
            envelope("video.asset.deleted", "asset-1", T0 + timedelta(seconds=4), "up-1"),
            ("deleted", "asset-1", 62.4, "pb-1", T0 + timedelta(seconds=4)),
        ),
    ]
    for payload, expected in steps:
        row = dead_letter(conn, payload)
        assert run_job(mux_webhook_retry, resources).success
        status, asset_id, duration, playback, changed = asset_row(conn, video)
        assert (
            status,
            asset_id,
            float(duration) if duration else None,
            playback,
            changed,
        ) == expected, payload["type"]
        assert dlq_rows(conn)[row][0] == "replayed"


def test_asset_event_finds_the_video_by_upload_id_and_links_it(conn, video, resources):
    dead_letter(conn, envelope("video.asset.ready", "asset-9", T0, "up-1", duration=10))
    assert run_job(mux_webhook_retry, resources).success
    assert asset_row(conn, video)[:2] == ("ready", "asset-9")


def test_stale_and_out_of_order_events_change_nothing(conn, video, resources):
    ready = dead_letter(
        conn,
        envelope("video.asset.ready", "asset-1", T0 + timedelta(minutes=5), "up-1", duration=30),
    )
    created = dead_letter(conn, envelope("video.asset.created", "asset-1", T0, "up-1"))
    assert run_job(mux_webhook_retry, resources).success
    assert asset_row(conn, video)[0] == "ready"
    rows = dlq_rows(conn)
    assert rows[ready] == ("replayed", 0, None)
    assert rows[created] == ("replayed", 0, "acknowledged: stale, nothing changed")


def test_duplicate_event_replayed_again_is_harmless(conn, video, resources):
    from mm_orchestration.jobs.dlq_operations import requeue

    row = dead_letter(
        conn,
        envelope(
            "video.asset.ready", "asset-1", T0, "up-1", duration=5, playback_ids=[{"id": "pb"}]
        ),
    )
    assert run_job(mux_webhook_retry, resources).success
    first = asset_row(conn, video)
    conn.execute("UPDATE portal.mux_webhook_dlq SET status = 'dead' WHERE id = %s", [row])
    requeue(conn, [row], "test")
    assert run_job(mux_webhook_retry, resources).success
    assert asset_row(conn, video) == first
    with pytest.raises(Exception, match="duplicate key"):
        dead_letter(
            conn,
            {"type": "video.asset.ready", "id": "x"},
            event_id=conn.execute("SELECT event_id FROM portal.mux_webhook_dlq").fetchone()[0],
        )


def test_unknown_type_is_acknowledged(conn, video, resources):
    row = dead_letter(
        conn,
        {
            "type": "video.live_stream.active",
            "id": "ls-1",
            "created_at": "2026-11-20T01:00:00Z",
            "data": {"id": "ls"},
        },
    )
    assert run_job(mux_webhook_retry, resources).success
    assert dlq_rows(conn)[row] == ("replayed", 0, "acknowledged: ignored, nothing changed")
    assert asset_row(conn, video)[0] == "waiting"


def test_unknown_asset_then_asset_appears(conn, resources):
    row = dead_letter(conn, envelope("video.asset.ready", "asset-new", T0, "up-new", duration=1))
    assert run_job(mux_webhook_retry, resources).success
    status, attempts, error = dlq_rows(conn)[row]
    assert (status, attempts) == ("pending", 1)
    assert "no media asset with mux_asset_id 'asset-new' or mux_upload_id 'up-new'" in error
    t = f.tenant(conn)
    video = f.asset(conn, t, mux_upload_id="up-new")
    conn.execute("UPDATE portal.mux_webhook_dlq SET next_attempt_at = now() WHERE id = %s", [row])
    assert run_job(mux_webhook_retry, resources).success
    assert dlq_rows(conn)[row][0] == "replayed"
    assert asset_row(conn, video)[:2] == ("ready", "asset-new")


def test_five_failures_back_off_then_die_and_escalate_once(conn, resources, sendgrid):
    row = dead_letter(
        conn, {"type": "video.asset.ready", "id": "evt-broken", "created_at": "not a date"}
    )
    delays = []
    for attempt in range(1, 6):
        assert run_job(mux_webhook_retry, resources).success
        status, attempts, error, delay = conn.execute(
            "SELECT status, attempts, last_error,"
            " extract(epoch FROM next_attempt_at - now()) FROM portal.mux_webhook_dlq"
        ).fetchone()
        assert attempts == attempt
        assert error == "invalid envelope: 'created_at' 'not a date' is not a timestamp"
        if attempt < 5:
            assert status == "pending"
            delays.append(float(delay))
            conn.execute(
                "UPDATE portal.mux_webhook_dlq SET next_attempt_at = now() - interval '1 second'"
            )
        else:
            assert status == "dead" and delay is None
    assert delays == sorted(delays) and delays[0] > 40 and delays[-1] > 300
    for _ in range(2):  # later runs never escalate again
        assert run_job(mux_webhook_retry, resources).success
    assert (
        conn.execute(
            "SELECT count(*) FROM portal.mux_webhook_dlq WHERE escalated_at IS NOT NULL"
        ).fetchone()[0]
        == 1
    )
    audits = conn.execute("SELECT action, details FROM ops.audit_log").fetchall()
    assert len(audits) == 1 and audits[0][0] == "escalate_dead_letter"
    assert audits[0][1]["event_id"] == "evt-broken" and "created_at" in audits[0][1]["last_error"]
    assert sendgrid.accepted_recipients() == ["reliability@motionmavericks.com.au"]
    assert "evt-broken" in sendgrid.mail_requests[0].body["subject"]
    history = conn.execute(
        "SELECT attempt FROM ops.dlq_attempts WHERE dlq_id = %s ORDER BY 1", [row]
    ).fetchall()
    assert [h[0] for h in history] == [1, 2, 3, 4, 5]


SECRET = "SuperSecret123"


def test_mux_signature_vector():
    header = "t=1565125718,v1=854ece4c22acef7c66b57d4e504153bc512595e8e9c772ece2a68150548c19a7"
    verify_signature(SECRET, '{"test":"body"}', header)
    verify_signature(SECRET, '{"test":"body"}', "t=1565125718,v1=00ff," + header.split(",")[1])
    with pytest.raises(BadSignature):
        verify_signature(SECRET, '{"test":"bodY"}', header)
    with pytest.raises(BadSignature):
        verify_signature(SECRET, '{"test":"body"}', "t=1565125718,v2=854ece4c")


def test_bad_signature_is_dead_at_once_and_never_applied(conn, video, resources):
    resources = {**resources, "mux": MuxWebhooks(signing_secret=SECRET)}
    good = envelope("video.asset.ready", "asset-1", T0, "up-1", duration=3)
    body = raw(good)
    t = "1765000000"
    signed = hmac.new(SECRET.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    forged = envelope("video.asset.deleted", "asset-1", T0 + timedelta(hours=1), "up-1")
    bad_row = dead_letter(conn, forged, raw_body=raw(forged), signature=f"t={t},v1={signed}")
    good_row = dead_letter(conn, good, raw_body=body, signature=f"t={t},v1={signed}")
    assert run_job(mux_webhook_retry, resources).success
    rows = dlq_rows(conn)
    assert rows[bad_row][0] == "dead" and "Mux-Signature" in rows[bad_row][2]
    assert rows[good_row][0] == "replayed"
    assert asset_row(conn, video)[0] == "ready"


def test_two_concurrent_runs_apply_each_of_1000_once(conn, database_url):
    t = f.tenant(conn)
    conn.execute(
        """INSERT INTO portal.media_assets (tenant_id, title, mux_asset_id)
           SELECT %s, 'v' || i, 'asset-' || i FROM generate_series(1, 1000) i""",
        [t],
    )
    conn.execute(
        """INSERT INTO portal.mux_webhook_dlq (event_id, event_type, payload)
           SELECT 'evt-' || i, 'video.asset.ready', jsonb_build_object(
               'type', 'video.asset.ready', 'id', 'evt-' || i,
               'created_at', '2026-11-20T01:00:00Z',
               'data', jsonb_build_object('id', 'asset-' || i, 'duration', i))
             FROM generate_series(1, 1000) i"""
    )
    mux = MuxWebhooks(batch_size=50)
    reports = []

    def worker() -> None:
        with connect(database_url) as c:
            reports.append(replay_due(c, mux, "run", "r@example.com"))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.replayed for r in reports) == 1000
    assert all(r.replayed > 0 for r in reports)  # both really worked
    assert (
        conn.execute(
            "SELECT count(*) FROM portal.mux_webhook_dlq WHERE status = 'replayed'"
        ).fetchone()[0]
        == 1000
    )
    assert (
        conn.execute("SELECT count(*) FROM portal.media_assets WHERE status = 'ready'").fetchone()[
            0
        ]
        == 1000
    )


def texts(size: int) -> st.SearchStrategy[str]:
    """Any text PostgreSQL's jsonb can hold (no NUL)."""
    return st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=size
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts(20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(texts(10), children, max_size=4)
    ),
    max_leaves=12,
)
near_envelopes = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "video.asset.ready",
                "video.asset.created",
                "video.upload.asset_created",
                "video.asset.deleted",
                "other",
            ]
        )
        | json_values,
        "id": texts(12) | json_values,
        "created_at": st.sampled_from(["2026-11-20T01:00:00Z", "2026-11-20", "yesterday"])
        | json_values,
        "data": st.fixed_dictionaries(
            {
                "id": st.sampled_from(["asset-1", ""]) | json_values,
                "upload_id": st.sampled_from(["up-1", None]) | json_values,
                "duration": st.floats(allow_nan=False, allow_infinity=False) | json_values,
            }
        )
        | json_values,
    },
    optional={"object": json_values},
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=json_values | near_envelopes)
def test_arbitrary_json_never_crashes_the_replay(conn, video, payload):
    row = dead_letter(conn, payload, event_id=f"fuzz-{datetime.now(UTC).timestamp()}")
    report = replay_due(conn, MuxWebhooks(), "fuzz", "r@example.com")
    status, attempts, error = conn.execute(
        "SELECT status, attempts, last_error FROM portal.mux_webhook_dlq WHERE id = %s", [row]
    ).fetchone()
    assert status in ("replayed", "pending", "dead")
    if status == "pending":
        assert attempts == 1 and error and report.failed >= 1
    conn.execute("DELETE FROM portal.mux_webhook_dlq WHERE id = %s", [row])
