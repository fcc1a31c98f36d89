"""storage-retention: old runs and spent rows go; recent ones and the evidence stay."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterInstance
from psycopg import sql

from mm_orchestration.features.invitations.job import invite_cleanup
from mm_orchestration.features.retention.job import storage_retention

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


def test_old_runs_and_rows_go_recent_ones_and_evidence_stay(conn, portal_db):
    conn.execute(
        """INSERT INTO ops.notification_outbox (idempotency_key, kind, recipient, status, sent_at)
           VALUES ('old-sent', 'k', 'a@x.example', 'sent', now() - interval '100 days'),
                  ('new-sent', 'k', 'a@x.example', 'sent', now() - interval '10 days'),
                  ('old-failed', 'k', 'a@x.example', 'failed', now() - interval '100 days')"""
    )
    conn.execute(
        """INSERT INTO ops.digest_periods (user_id, period, moment, outcome, settled_at)
           VALUES (gen_random_uuid(), '2026-08-01', now() - interval '100 days', 'queued',
                   now() - interval '100 days'),
                  (gen_random_uuid(), '2026-11-01', now() - interval '10 days', 'queued',
                   now() - interval '10 days')"""
    )
    conn.execute(
        """INSERT INTO ops.job_runs (job_name, window_key, run_id, status, started_at)
           VALUES ('x', 'old', 'r1', 'succeeded', now() - interval '500 days'),
                  ('x', 'new', 'r2', 'succeeded', now() - interval '100 days')"""
    )
    conn.execute(
        "INSERT INTO ops.audit_log (occurred_at, actor, action) "
        "VALUES (now() - interval '1000 days', 'olivia', 'manual_run')"
    )
    conn.execute(
        "INSERT INTO ops.residency_reports (week_start, generated_at, storage_uri, "
        "sha256, row_count, compliant) VALUES ('2023-01-02', now() - interval "
        "'1000 days', 'k', 'h', 1, true)"
    )
    conn.execute(
        "INSERT INTO ops.backup_drills (started_at, status, method) "
        "VALUES (now() - interval '1000 days', 'succeeded', 'local')"
    )
    with DagsterInstance.ephemeral() as instance:
        old = [
            invite_cleanup.execute_in_process(
                instance=instance, resources={"portal_db": portal_db}
            ).run_id
            for _ in range(2)
        ]
        time.sleep(2.5)
        recent = invite_cleanup.execute_in_process(
            instance=instance, resources={"portal_db": portal_db}
        ).run_id
        two_seconds = 2 / 86400
        result = storage_retention.execute_in_process(
            instance=instance,
            resources={"portal_db": portal_db},
            run_config={
                "ops": {"prune_dagster_runs": {"config": {"dagster_run_days": two_seconds}}}
            },
        )
        assert result.success
        assert [instance.get_run_by_id(r) for r in old] == [None, None]
        assert instance.get_run_by_id(recent) is not None
        assert instance.get_run_by_id(result.run_id) is not None
        assert result.output_for_node("prune_dagster_runs") == 2
    keys = sorted(r[0] for r in conn.execute("SELECT idempotency_key FROM ops.notification_outbox"))
    assert keys == ["new-sent", "old-failed"]
    windows = sorted(
        r[0] for r in conn.execute("SELECT window_key FROM ops.job_runs WHERE job_name = 'x'")
    )
    assert windows == ["new"]
    for table in ("audit_log", "residency_reports", "backup_drills"):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("ops", table))
        count = conn.execute(query).fetchone()[0]
        assert count >= 1, table
    row = conn.execute(
        "SELECT details FROM ops.job_runs WHERE job_name = 'storage-retention' "
        "AND status = 'succeeded'"
    ).fetchone()
    assert row[0] == {"dagster_runs": 2, "outbox": 1, "digest_periods": 1, "job_runs": 1}
    assert conn.execute("SELECT period FROM ops.digest_periods").fetchall() == [("2026-11-01",)]
