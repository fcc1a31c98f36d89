"""The DLQ depth sensor's episodes, the send_alert job, and the operator tools."""

from __future__ import annotations

import json

import pytest
from dagster import SkipReason, build_sensor_context

from mm_orchestration.features.mux_dlq.depth_sensor import dlq_depth_sensor
from mm_orchestration.features.mux_dlq.operator_jobs import dlq_discard, dlq_requeue
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.monitoring.alerts import send_alert
from tests.conftest import run_job
from tests.local_stack import mm_jobs
from tests.mux_factory import dead_letter

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


def add_rows(conn, n, status="pending", start=0):
    for i in range(start, start + n):
        dead_letter(conn, {"type": "video.asset.ready", "id": f"e{i}"}, status=status)


def tick(portal_db, cursor=None, threshold=10):
    with build_sensor_context(
        cursor=cursor,
        resources={"portal_db": portal_db, "mux": MuxWebhooks(alert_threshold=threshold)},
    ) as context:
        result = dlq_depth_sensor(context)
        return result, context.cursor if isinstance(result, SkipReason) else result.cursor


def test_depth_episode_alerts_once_and_recovers_once(conn, portal_db):
    add_rows(conn, 10)
    result, cursor = tick(portal_db)
    assert isinstance(result, SkipReason) and "10 <= threshold 10" in result.skip_message

    add_rows(conn, 1, status="dead", start=10)  # pending plus dead: 11
    result, cursor = tick(portal_db, cursor)
    (request,) = result.run_requests
    config = request.run_config["ops"]["record_alert"]["config"]
    assert config["contact"] == "reliability" and "11 events" in config["subject"]
    episode = json.loads(cursor)["episode"]
    assert request.run_key == f"dlq-depth:alert:{episode}"

    for _ in range(3):  # the same episode: explained, never alerted again
        result, cursor = tick(portal_db, cursor)
        assert isinstance(result, SkipReason) and "already alerted" in result.skip_message

    conn.execute("UPDATE portal.mux_webhook_dlq SET status = 'replayed' WHERE event_id <> 'e0'")
    result, cursor = tick(portal_db, cursor)
    (recovery,) = result.run_requests
    assert recovery.run_key == f"dlq-depth:recovery:{episode}"
    result, cursor = tick(portal_db, cursor)
    assert isinstance(result, SkipReason)


def test_cursor_carries_the_episode_across_a_restart(conn, portal_db):
    add_rows(conn, 12)
    _, cursor = tick(portal_db)
    # A restarted daemon starts from the stored cursor: no second alert.
    result, _ = tick(portal_db, cursor)
    assert isinstance(result, SkipReason) and "already alerted" in result.skip_message


def test_discarded_dead_letters_leave_the_depth(conn, portal_db):
    from mm_orchestration.features.mux_dlq.operations import discard

    add_rows(conn, 11, status="dead")
    first = conn.execute("SELECT min(id) FROM portal.mux_webhook_dlq").fetchone()[0]
    discard(conn, first, "duplicate upload, video re-uploaded", "olivia")
    result, _ = tick(portal_db)
    assert isinstance(result, SkipReason) and "depth 10" in result.skip_message


def test_send_alert_queues_audits_and_sends_once(conn, portal_db, mailer, job_settings, sendgrid):
    config = {
        "ops": {
            "record_alert": {
                "config": {
                    "key": "dlq-depth:alert:2026-11-28T21:00:00+00:00",
                    "subject": "DLQ above 10",
                    "body": "11 events waiting",
                    "action": "dlq_depth_alert",
                    "source_job": "mux-webhook-retry",
                    "details_json": '{"depth": 11}',
                }
            }
        }
    }
    resources = {"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings}
    assert run_job(send_alert, resources, config).success
    assert run_job(send_alert, resources, config).success  # same key: nothing new
    assert sendgrid.accepted_recipients() == ["reliability@motionmavericks.com.au"]
    (audit,) = conn.execute("SELECT actor, action, job_name, details FROM ops.audit_log")
    assert audit[:3] == ("alerting", "dlq_depth_alert", "mux-webhook-retry")
    assert audit[3]["depth"] == 11


def test_requeue_and_discard_jobs_are_audited(conn, portal_db):
    add_rows(conn, 3, status="dead")
    ids = [r[0] for r in conn.execute("SELECT id FROM portal.mux_webhook_dlq ORDER BY id")]
    conn.execute("UPDATE portal.mux_webhook_dlq SET attempts = 5, escalated_at = now()")
    result = run_job(
        dlq_requeue,
        {"portal_db": portal_db},
        {"ops": {"requeue_dead_letters": {"config": {"ids": ids[:2]}}}},
        tags={"mm/actor": "jack"},
    )
    assert result.success
    rows = conn.execute(
        "SELECT status, attempts, escalated_at FROM portal.mux_webhook_dlq ORDER BY id"
    ).fetchall()
    assert rows[0] == ("pending", 0, None) and rows[1] == ("pending", 0, None)
    assert rows[2][0] == "dead"
    discard_config = {
        "ops": {"discard_dead_letter": {"config": {"id": ids[2], "reason": "test event"}}}
    }
    # No person, no change: the actor is never a default name (nor a field to fill in).
    nameless = run_job(dlq_discard, {"portal_db": portal_db}, discard_config)
    assert not nameless.success
    (failure,) = [e for e in nameless.all_events if e.is_step_failure]
    assert "names no person" in failure.step_failure_data.error.message
    result = run_job(
        dlq_discard, {"portal_db": portal_db}, discard_config, tags={"mm/actor": "nina"}
    )
    assert result.success
    audit = conn.execute("SELECT actor, action, details FROM ops.audit_log ORDER BY id").fetchall()
    assert [(a[0], a[1]) for a in audit] == [("jack", "dlq_requeue"), ("nina", "dlq_discard")]
    assert audit[0][2]["ids"] == ids[:2] and audit[1][2]["reason"] == "test event"
    assert audit[1][2]["payload"] == {"type": "video.asset.ready", "id": "e2"}


def test_cli_list_show_requeue_discard(conn, database_url, tmp_path):
    import os

    env = {**os.environ, "DATABASE_URL": database_url, "MM_DATA_DIR": str(tmp_path)}
    add_rows(conn, 2, status="dead")
    a, b = [r[0] for r in conn.execute("SELECT id FROM portal.mux_webhook_dlq ORDER BY id")]
    conn.execute(
        "INSERT INTO ops.dlq_attempts (dlq_id, event_id, attempt, error) "
        "VALUES (%s, 'e0', 1, 'no media asset with mux_asset_id x')",
        [a],
    )

    def cli(*args):
        return mm_jobs(env, "dlq", *args)

    listed = cli("list", "--status", "dead")
    assert listed.returncode == 0 and "2 row(s)" in listed.stdout
    shown = cli("show", str(a))
    assert shown.returncode == 0
    detail = json.loads(shown.stdout)
    assert detail["payload"] == {"type": "video.asset.ready", "id": "e0"}
    assert detail["error_history"][0]["error"] == "no media asset with mux_asset_id x"
    assert cli("requeue", str(a), "--actor", "olivia").returncode == 0
    assert cli("discard", str(b), "--reason", "test data", "--actor", "olivia").returncode == 0
    assert cli("discard", str(b)).returncode == 2  # --reason is required
    assert cli("show", "999999").returncode == 1
    # A failed attempt is audited too; an actor that could forge a line is refused.
    assert cli("requeue", "999999", "--actor", "olivia").returncode == 1
    forged = cli("requeue", str(a), "--actor", "olivia\n2026-11-30 mallory")
    assert forged.returncode == 2 and "--actor: must be a person's name" in forged.stderr
    assert cli("requeue", str(a), "--actor", "x" * 300).returncode == 2
    audit = conn.execute(
        "SELECT actor, action, outcome, details FROM ops.audit_log ORDER BY id"
    ).fetchall()
    assert [a[:3] for a in audit] == [
        ("olivia", "dlq_requeue", "succeeded"),
        ("olivia", "dlq_discard", "succeeded"),
        ("olivia", "dlq_requeue", "failed"),
    ]
    # Who really ran it, beside the --actor anyone may type.
    assert all(a[3]["os_user"] for a in audit)
    assert "unknown id" in audit[2][3]["error"] and audit[2][3]["ids"] == [999999]
    assert (
        conn.execute("SELECT status FROM portal.mux_webhook_dlq WHERE id = %s", [a]).fetchone()[0]
        == "pending"
    )


def test_a_mistyped_id_fails_at_once_saying_why_in_one_line(conn, portal_db):
    """The operator's mistake is the run's one-line reason, with no retry and no trace first."""
    import time

    from dagster import DagsterInstance

    from mm_orchestration.monitoring.run_status import failure_summary

    started = time.monotonic()
    with DagsterInstance.ephemeral() as instance:
        result = dlq_discard.execute_in_process(
            resources={"portal_db": portal_db},
            run_config={"ops": {"discard_dead_letter": {"config": {"id": 55, "reason": "typo"}}}},
            instance=instance,
            tags={"mm/actor": "nina"},
            raise_on_error=False,
        )
        assert not result.success
        summary = failure_summary(instance, result.run_id)
    assert summary == "discard_dead_letter: no pending or dead letter with id 55"
    assert time.monotonic() - started < 10


def test_a_discarded_letter_is_its_own_state_and_survives_requeue_all_dead(conn, database_url):
    """Discarded for good stays discarded: `--all-dead` brings back the other dead letters
    only; `dlq list` tells them apart; naming the id requeues it and withdraws the discard."""
    import os

    from mm_orchestration.features.mux_dlq.operations import discard, list_rows, requeue

    add_rows(conn, 3, status="dead")
    gone, dead, other = [
        r[0] for r in conn.execute("SELECT id FROM portal.mux_webhook_dlq ORDER BY id")
    ]
    discard(conn, gone, "test event from the staging Mux account", "olivia")
    with pytest.raises(LookupError, match="already discarded by olivia"):
        discard(conn, gone, "again", "jack")

    assert requeue(conn, [], "jack", all_dead=True) == [dead, other]
    statuses = {r["id"]: r["status"] for r in list_rows(conn)}
    assert statuses == {gone: "discarded", dead: "pending", other: "pending"}
    assert [r["id"] for r in list_rows(conn, "discarded")] == [gone]

    env = {**os.environ, "DATABASE_URL": database_url}
    listed = mm_jobs(env, "dlq", "list", "--status", "discarded")
    assert listed.returncode == 0 and "1 row(s)" in listed.stdout and "discarded" in listed.stdout

    assert requeue(conn, [gone], "jack") == [gone]  # named: back, and no longer discarded
    assert conn.execute("SELECT count(*) FROM ops.dlq_discards").fetchone() == (0,)
    audit = conn.execute(
        "SELECT details FROM ops.audit_log WHERE action = 'dlq_requeue' ORDER BY id"
    ).fetchall()
    assert audit[-1][0]["undiscarded"] == [gone]


def test_letters_discarded_before_the_discard_table_are_carried_over(conn):
    """Migration 0007 reads the old 'discarded by <actor>: <reason>' marks."""
    from mm_orchestration.platform.migrate import available

    conn.execute("DROP TABLE ops.dlq_discards")  # as before 0007
    dead_letter(conn, {"type": "video.asset.ready", "id": "old"}, status="dead")
    conn.execute(
        "UPDATE portal.mux_webhook_dlq SET last_error = 'discarded by olivia: dup: sent twice'"
    )
    (migration,) = [m for m in available(True) if m.name.startswith("ops/0007")]
    conn.execute(migration.sql.encode())
    row = conn.execute("SELECT actor, reason FROM ops.dlq_discards").fetchone()
    assert row == ("olivia", "dup: sent twice")


def test_poison_letters_can_be_shown_listed_and_discarded(conn, database_url):
    """A letter 1,500 levels deep or holding a 5,001-digit number, and an event id made to
    forge listing lines: the operator tools show, list and discard them like any other."""
    import os

    from mm_orchestration.features.mux_dlq.operations import discard, show_row

    deep = "[" * 1500 + "]" * 1500
    for event_id, payload in (
        ("evt-deep", '{"type": "video.asset.ready", "data": {"tracks": ' + deep + "}}"),
        ("evt-huge", '{"type": "video.asset.ready", "data": {"duration": 1e5000}}'),
        ("evt-z\n       1  replayed  forged \x1b[31mRED\x1b[0m", '{"type": "x"}'),
    ):
        conn.execute(
            "INSERT INTO portal.mux_webhook_dlq (event_id, event_type, payload, status) "
            "VALUES (%s, 'video.asset.ready', %s::jsonb, 'dead')",
            [event_id, payload],
        )
    ids = [r[0] for r in conn.execute("SELECT id FROM portal.mux_webhook_dlq ORDER BY id")]
    for dlq_id in ids[:2]:
        assert isinstance(show_row(conn, dlq_id)["payload"], str)  # kept as stored text
        discard(conn, dlq_id, "poison", "olivia")
    audit = conn.execute(
        "SELECT details FROM ops.audit_log WHERE action = 'dlq_discard' ORDER BY id"
    ).fetchall()
    assert [d["event_type"] for (d,) in audit] == ["video.asset.ready"] * 2
    # What Python cannot decode (too deep, a 5,001-digit number) is kept as text, capped
    # with a marker as any text is.
    assert isinstance(audit[0][0]["payload"], str) and "tracks" in audit[0][0]["payload"]
    assert audit[1][0]["payload"].endswith("more characters]")

    env = {**os.environ, "DATABASE_URL": database_url}
    listed = mm_jobs(env, "dlq", "list")
    assert listed.returncode == 0 and "3 row(s)" in listed.stdout
    assert len(listed.stdout.splitlines()) == 4 and "\x1b" not in listed.stdout
    bad = mm_jobs(env, "dlq", "list", "--limit", "-1")
    assert bad.returncode == 2 and "not a whole number" in bad.stderr and "from 1 to" in bad.stderr


def test_secrets_in_a_discard_reason_or_a_replay_error_are_never_shown_or_audited(conn):
    """A reason is typed by a person (who may paste a connection string); a replay's
    error may quote one. Neither shows nor audits a password, and a NUL is stored."""
    from mm_orchestration.features.mux_dlq.operations import discard, list_rows, show_row

    add_rows(conn, 2, status="dead")
    first, second = [
        r[0] for r in conn.execute("SELECT id FROM portal.mux_webhook_dlq ORDER BY id")
    ]
    conn.execute(
        "UPDATE portal.mux_webhook_dlq SET last_error = %s WHERE id = %s",
        ["connection failed: host=db password=hunter2 user=jobs", second],
    )
    discard(conn, first, "replayed by hand via postgresql://jobs:hunter2@db/portal\x00", "olivia")
    shown = json.dumps(
        [show_row(conn, first), show_row(conn, second), list_rows(conn)], default=str
    )
    assert "hunter2" not in shown and "***" in shown
    (details,) = conn.execute(
        "SELECT details FROM ops.audit_log WHERE action = 'dlq_discard'"
    ).fetchone()
    assert details["reason"] == "replayed by hand via postgresql://jobs:***@db/portal\\u0000"


def test_a_failure_summary_masks_a_quoted_password():
    from types import SimpleNamespace

    from mm_orchestration.monitoring.run_status import error_line

    error = SimpleNamespace(
        message="OperationalError: connection to postgresql://jobs:hunter2@db/portal failed\nmore",
        cause=None,
        cls_name="OperationalError",
    )
    assert error_line(error) == (
        "OperationalError: connection to postgresql://jobs:***@db/portal failed"
    )


def test_a_discarded_letters_payload_is_audited_masked_and_capped(conn):
    """The entry of a discard goes the one way every entry goes: a secret in the payload is
    masked, and a huge one is cut with a marker."""
    from mm_orchestration.features.mux_dlq.operations import discard

    payload = {"type": "video.asset.ready", "data": {"signing_key": "sk-live", "notes": "n" * 9000}}
    conn.execute(
        "INSERT INTO portal.mux_webhook_dlq (event_id, event_type, payload, status) "
        "VALUES ('evt-s', 'video.asset.ready', %s::jsonb, 'dead') RETURNING id",
        [json.dumps(payload)],
    )
    (dlq_id,) = conn.execute("SELECT id FROM portal.mux_webhook_dlq").fetchone()
    discard(conn, dlq_id, "test", "olivia", os_user="olivia")
    (details,) = conn.execute(
        "SELECT details FROM ops.audit_log WHERE action = 'dlq_discard'"
    ).fetchone()
    assert details["payload"]["data"]["signing_key"] == "***"
    assert "sk-live" not in json.dumps(details)
    assert details["payload"]["data"]["notes"].endswith("[truncated: 5000 more characters]")
    assert details["os_user"] == "olivia"
