"""mux-webhook-retry against a real PostgreSQL: every event type, failures, escalation."""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_orchestration.features.mux_dlq.events import BadSignature, verify_signature
from mm_orchestration.features.mux_dlq.job import mux_webhook_retry
from mm_orchestration.features.mux_dlq.replay import replay_due
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.platform.db import connect
from tests import factories as f
from tests.conftest import run_job
from tests.mux_factory import dead_letter, dead_letter_json, envelope, nested, raw

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

T0 = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)


@pytest.fixture
def video(conn):
    t = f.tenant(conn)
    return f.asset(conn, t, title="Hero video", mux_upload_id="up-1", status="waiting")


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
    from mm_orchestration.features.mux_dlq.operations import requeue

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


VERIFY_CASES = {
    # The row's body is what Mux signed; its payload (what would be applied) was changed.
    "forged payload": (
        lambda good: {
            "payload": raw(FORGED),
            "raw_body": raw(good),
            "signature": signed(raw(good)),
        },
        "payload differs from the signed raw_body; only the signed body is applied",
    ),
    # A request that came with no Mux-Signature header at all.
    "no signature": (
        lambda good: {"payload": raw(FORGED), "raw_body": raw(FORGED), "signature": None},
        "unverifiable: no stored signature; with MUX_WEBHOOK_SECRET set only events whose"
        " Mux-Signature matches their body are applied",
    ),
    "no body": (
        lambda good: {"payload": raw(FORGED), "raw_body": None, "signature": signed(raw(good))},
        "unverifiable: no stored raw_body; with MUX_WEBHOOK_SECRET set only events whose"
        " Mux-Signature matches their body are applied",
    ),
    "neither": (
        lambda good: {"payload": raw(FORGED), "raw_body": None, "signature": None},
        "unverifiable: no stored raw_body and signature; with MUX_WEBHOOK_SECRET set only"
        " events whose Mux-Signature matches their body are applied",
    ),
    "signed text that is not JSON": (
        lambda good: {"payload": raw(FORGED), "raw_body": "{oops", "signature": signed("{oops")},
        "signed raw_body is not a JSON document, so nothing can be applied",
    ),
}
FORGED = envelope("video.asset.deleted", "asset-1", T0 + timedelta(hours=1))


@pytest.mark.parametrize("case", list(VERIFY_CASES))
def test_with_a_secret_only_the_signed_body_is_ever_applied(conn, video, resources, case):
    conn.execute("UPDATE portal.media_assets SET mux_asset_id = 'asset-1' WHERE id = %s", [video])
    resources = {**resources, "mux": MuxWebhooks(signing_secret=SECRET)}
    good = envelope("video.asset.ready", "asset-1", T0, duration=3)
    columns, error = VERIFY_CASES[case]
    cols = columns(good)
    bad = dead_letter_json(conn, cols.pop("payload"), "evt-forged", **cols)
    assert run_job(mux_webhook_retry, resources).success
    assert dlq_rows(conn)[bad] == ("dead", 1, error)
    assert asset_row(conn, video)[0] == "waiting"
    # The same row, signed as Mux would sign it, is applied.
    conn.execute(
        "UPDATE portal.mux_webhook_dlq SET status = 'pending', payload = %s::jsonb,"
        " raw_body = %s, signature = %s WHERE id = %s",
        [raw(good), raw(good), signed(raw(good)), bad],
    )
    assert run_job(mux_webhook_retry, resources).success
    assert dlq_rows(conn)[bad][0] == "replayed"
    assert asset_row(conn, video)[:3] == ("ready", "asset-1", 3)


def signed(body: str, secret: str = SECRET, t: str = "1765000000") -> str:
    digest = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def test_mux_signature_with_non_ascii_text_is_a_mismatch_not_a_crash():
    for header in ("t=1,v1=\u00e9", "t=\u00e9,v1=\u00e9\u00e9", "t=1,v1=\U0001f600,v1=\u200b"):
        with pytest.raises(BadSignature, match="no v1 signature matches"):
            verify_signature(SECRET, '{"test":"body"}', header)
    verify_signature("s\u00e9cret", "b\u00f6dy", signed("b\u00f6dy", "s\u00e9cret"))


READY_AT_T0 = (
    '{"type": "video.asset.ready", "id": "evt-poison", "created_at": "2026-11-20T01:00:00Z",'
    ' "data": {"id": "asset-1", %s}}'
)
POISONS = {
    # The driver's json decoder gives up on this (RecursionError) before any row is settled.
    "nested 1,500 levels": (
        READY_AT_T0 % f'"tracks": {nested(1500)}',
        {},
        ("pending", 1, "implausible event: the payload is nested more than 32 levels"),
    ),
    "the whole payload nested 1,500 levels": (
        nested(1500),
        {},
        ("pending", 1, "invalid envelope: expected a JSON object, got an array"),
    ),
    # PostgreSQL keeps 1e5000 as a 5,001-digit numeric; Python refuses to convert it.
    "duration 1e5000": (
        READY_AT_T0 % '"duration": 1e5000',
        {},
        (
            "pending",
            1,
            f"implausible event: 'data.duration' '1{'0' * 29}...' (255+ characters)"
            " is not a duration in seconds (0 to 604,800)",
        ),
    ),
    # hmac.compare_digest raises TypeError on non-ASCII text: now simply no match.
    "signature t=1,v1=\u00e9": (
        READY_AT_T0 % '"duration": 5',
        {"raw_body": "{}", "signature": "t=1,v1=\u00e9"},
        ("dead", 1, "invalid Mux-Signature: no v1 signature matches the stored body"),
    ),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poison_letter_fails_alone_and_the_good_event_behind_it_applies(
    conn, video, resources, sendgrid, poison
):
    payload_json, cols, expected = POISONS[poison]
    cols = cols or {"raw_body": payload_json, "signature": signed(payload_json)}
    resources = {**resources, "mux": MuxWebhooks(signing_secret=SECRET)}
    conn.execute("UPDATE portal.media_assets SET mux_asset_id = 'asset-1' WHERE id = %s", [video])
    bad = dead_letter_json(conn, payload_json, "evt-poison", **cols)
    good_event = envelope("video.asset.ready", "asset-1", T0 + timedelta(seconds=1), duration=30)
    good = dead_letter(
        conn, good_event, raw_body=raw(good_event), signature=signed(raw(good_event))
    )
    result = run_job(mux_webhook_retry, resources)
    assert result.success
    rows = dlq_rows(conn)
    assert rows[bad] == expected
    assert rows[good] == ("replayed", 0, None)
    assert asset_row(conn, video)[:3] == ("ready", "asset-1", 30)
    assert conn.execute("SELECT dlq_id, attempt, error FROM ops.dlq_attempts").fetchall() == [
        (bad, 1, expected[2])
    ]
    if expected[0] == "dead":
        assert "evt-poison" in sendgrid.mail_requests[0].body["subject"]


def test_a_batch_of_poisons_settles_every_row_in_one_run(conn, video, resources):
    conn.execute("UPDATE portal.media_assets SET mux_asset_id = 'asset-1' WHERE id = %s", [video])
    bad = [
        dead_letter_json(
            conn, text, f"evt-poison-{i}", **(cols or {"raw_body": text, "signature": signed(text)})
        )
        for i, (text, cols, _) in enumerate(POISONS.values())
    ]
    created = envelope("video.asset.created", "asset-1", T0)
    good = dead_letter(conn, created, raw_body=raw(created), signature=signed(raw(created)))
    resources = {**resources, "mux": MuxWebhooks(signing_secret=SECRET, batch_size=2)}
    assert run_job(mux_webhook_retry, resources).success
    rows = dlq_rows(conn)
    assert [rows[r] for r in bad] == [expected for _, _, expected in POISONS.values()]
    assert rows[good] == ("replayed", 0, None)
    assert asset_row(conn, video)[0] == "preparing"


TIES = {
    # Both in one batch: the first goes set-based, the second one by one.
    "one batch, by asset id": ("asset-1", 1),
    # Found only through the upload id: both go one by one.
    "one batch, by upload id": (None, 1),
    # One run each: the second goes set-based against the first's result.
    "one run each, by asset id": ("asset-1", 2),
}


@pytest.mark.parametrize("tie", list(TIES))
@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("video.asset.errored", "video.asset.created", "errored"),
        ("video.asset.created", "video.asset.errored", "errored"),
        ("video.asset.deleted", "video.asset.ready", "deleted"),
        ("video.asset.ready", "video.asset.created", "ready"),
    ],
)
def test_ties_in_created_at_follow_the_lifecycle(
    conn, video, resources, tie, first, second, expected
):
    linked, runs = TIES[tie]
    if linked:
        conn.execute(
            "UPDATE portal.media_assets SET mux_asset_id = %s WHERE id = %s", [linked, video]
        )
    rows = []
    for kind in (first, second):
        rows.append(dead_letter(conn, envelope(kind, "asset-1", T0, "up-1", duration=9)))
        if runs == 2:
            assert run_job(mux_webhook_retry, resources).success
    if runs == 1:
        assert run_job(mux_webhook_retry, resources).success
    status, asset_id, _, _, changed = asset_row(conn, video)
    assert (status, asset_id, changed) == (expected, "asset-1", T0)
    later_in_lifecycle = RANK[second] >= RANK[first]
    assert [dlq_rows(conn)[r] for r in rows] == [
        ("replayed", 0, None),
        ("replayed", 0, None if later_in_lifecycle else "acknowledged: stale, nothing changed"),
    ]


RANK = {
    "video.asset.created": 1,
    "video.asset.ready": 2,
    "video.asset.errored": 2,
    "video.asset.deleted": 3,
}


def test_an_event_from_the_future_fails_and_never_freezes_the_video(conn, video, resources):
    conn.execute("UPDATE portal.media_assets SET mux_asset_id = 'asset-1' WHERE id = %s", [video])
    far = dead_letter_json(
        conn,
        '{"type": "video.asset.deleted", "id": "evt-9999",'
        ' "created_at": "9999-12-31T23:59:59Z", "data": {"id": "asset-1"}}',
        "evt-9999",
    )
    now = datetime.now(UTC)
    soon = dead_letter(conn, envelope("video.asset.created", "asset-1", now + timedelta(hours=1)))
    assert run_job(mux_webhook_retry, resources).success
    rows = dlq_rows(conn)
    assert rows[far][:2] == ("pending", 1)
    assert rows[far][2].startswith(
        "implausible event: 'created_at' '9999-12-31T23:59:59Z' is more than 10 minutes in the"
        " future (database time "
    )
    assert rows[soon][:2] == ("pending", 1) and "in the future" in rows[soon][2]
    assert asset_row(conn, video)[0] == "waiting"
    # A clock a few minutes ahead is tolerated; later real events are not dropped as stale.
    ahead = dead_letter(conn, envelope("video.asset.ready", "asset-1", now + timedelta(minutes=5)))
    assert run_job(mux_webhook_retry, resources).success
    assert dlq_rows(conn)[ahead] == ("replayed", 0, None)
    later = dead_letter(
        conn, envelope("video.asset.deleted", "asset-1", now + timedelta(minutes=6))
    )
    assert run_job(mux_webhook_retry, resources).success
    assert dlq_rows(conn)[later] == ("replayed", 0, None)
    assert asset_row(conn, video)[0] == "deleted"


def test_an_event_from_before_mux_existed_fails(conn, video, resources):
    row = dead_letter(
        conn, envelope("video.asset.created", "asset-1", T0.replace(year=1970), "up-1")
    )
    assert run_job(mux_webhook_retry, resources).success
    assert dlq_rows(conn)[row] == (
        "pending",
        1,
        "implausible event: 'created_at' '1970-11-20T01:00:00.000000Z' is before 2010-01-01",
    )


ACCEPTED = "is not a duration in seconds (0 to 604,800)"


@pytest.mark.parametrize(
    ("duration", "error"),
    [
        (
            "1e400",
            f"implausible event: 'data.duration' '1{'0' * 29}...' (255+ characters) {ACCEPTED}",
        ),
        ("-1", f"implausible event: 'data.duration' -1 {ACCEPTED}"),
        ("604800.5", f"implausible event: 'data.duration' 604800.5 {ACCEPTED}"),
        (
            "1e-50",
            f"implausible event: 'data.duration' '0.{'0' * 28}...' (52 characters) {ACCEPTED}",
        ),
        ('"62.4"', "invalid envelope: 'data.duration' must be a number, not a string"),
        ("true", "invalid envelope: 'data.duration' must be a number, not a boolean"),
        ("[62.4]", "invalid envelope: 'data.duration' must be a number, not an array"),
        ("604800", None),
        ("0", None),
        ("null", None),
    ],
)
def test_durations_outside_zero_to_seven_days_fail(conn, video, resources, duration, error):
    row = dead_letter_json(
        conn,
        '{"type": "video.asset.ready", "id": "evt-d", "created_at": "2026-11-20T01:00:00Z",'
        f' "data": {{"id": "asset-1", "upload_id": "up-1", "duration": {duration}}}}}',
        "evt-d",
    )
    assert run_job(mux_webhook_retry, resources).success
    status, _, stored, _, _ = asset_row(conn, video)
    if error is None:
        assert dlq_rows(conn)[row] == ("replayed", 0, None)
        assert (status, stored) == ("ready", None if duration == "null" else int(duration))
    else:
        assert dlq_rows(conn)[row] == ("pending", 1, error)
        assert (status, stored) == ("waiting", None)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ('{"id": 42}', "invalid envelope: 'data.id' must be a string, not a number"),
        ('{"id": "%s"}' % ("a" * 256), "implausible event: 'data.id' is longer than 255"),
        (
            '{"id": "asset-1", "upload_id": ["up-1"]}',
            "invalid envelope: 'data.upload_id' must be a string, not an array",
        ),
        (
            '{"id": "asset-1", "playback_ids": "pb"}',
            "invalid envelope: 'data.playback_ids' must be a list, not a string",
        ),
        (
            '{"id": "asset-1", "playback_ids": [{"policy": "signed"}]}',
            "invalid envelope: 'data.playback_ids[0]' has no 'id'",
        ),
        (
            '{"id": "asset-1", "playback_ids": ["pb"]}',
            "invalid envelope: 'data.playback_ids[0]' must be an object, not a string",
        ),
    ],
)
def test_fields_of_the_wrong_type_or_size_fail(conn, video, resources, data, error):
    row = dead_letter_json(
        conn,
        '{"type": "video.asset.ready", "id": "evt-t", "created_at": "2026-11-20T01:00:00Z",'
        f' "data": {data}}}',
        "evt-t",
    )
    assert run_job(mux_webhook_retry, resources).success
    status, attempts, last_error = dlq_rows(conn)[row]
    assert (status, attempts) == ("pending", 1) and last_error.startswith(error)


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


def test_a_run_fails_each_row_at_most_once_even_with_no_backoff(conn, resources):
    rows = [
        dead_letter(conn, {"type": "video.asset.ready", "id": f"evt-{i}", "created_at": "x"})
        for i in range(3)
    ]
    resources = {**resources, "mux": MuxWebhooks(backoff_seconds=0, batch_size=1)}
    assert run_job(mux_webhook_retry, resources).success
    assert [dlq_rows(conn)[r][:2] for r in rows] == [("pending", 1)] * 3


def test_attempts_out_of_range_never_block_the_queue(conn, video, resources):
    """A row whose `attempts` is the largest integer (or negative) still gets its failed
    attempt recorded, and the good event behind it is applied."""
    conn.execute("UPDATE portal.media_assets SET mux_asset_id = 'asset-1' WHERE id = %s", [video])
    huge = dead_letter_json(conn, '{"type": 1}', "evt-huge", attempts=2**31 - 1)
    negative = dead_letter_json(conn, '{"type": 1}', "evt-negative", attempts=-5)
    good = dead_letter(conn, envelope("video.asset.ready", "asset-1", T0, duration=7))
    assert run_job(mux_webhook_retry, resources).success
    rows = dlq_rows(conn)
    assert rows[huge][:2] == ("dead", 1000001)
    assert rows[negative][:2] == ("pending", 1)
    assert rows[good] == ("replayed", 0, None)
    assert asset_row(conn, video)[:3] == ("ready", "asset-1", 7)
