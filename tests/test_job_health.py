"""The job_health dashboard's numbers from a known ledger."""

from __future__ import annotations

import base64

from dagster import DagsterInstance, materialize

from mm_orchestration.assets.job_health import job_health


def ledger(conn, job, status, ms, hours_ago):
    conn.execute(
        "INSERT INTO ops.job_runs (job_name, window_key, run_id, status, started_at,"
        " finished_at, duration_ms) VALUES (%s, gen_random_uuid()::text, 'r', %s,"
        " now() - make_interval(hours => %s), now() - make_interval(hours => %s), %s)",
        [job, status, hours_ago, hours_ago, ms],
    )


def test_dashboard_numbers(conn, portal_db):
    for ms in (1000, 2000, 3000, 4000, 100000):  # p95 well over the 60 s SLA
        ledger(conn, "share-link-expiry", "succeeded", ms, 1)
    ledger(conn, "share-link-expiry", "failed", 10, 2)
    ledger(conn, "share-link-expiry", "skipped", 0, 3)
    ledger(conn, "share-link-expiry", "succeeded", 500, 48)  # 7 days only
    ledger(conn, "invite-cleanup", "succeeded", 40, 5)
    conn.execute(
        "INSERT INTO portal.mux_webhook_dlq (event_id, status) VALUES ('a', 'pending'),"
        " ('b', 'dead'), ('c', 'replayed')"
    )
    with DagsterInstance.ephemeral() as instance:
        result = materialize([job_health], instance=instance, resources={"portal_db": portal_db})
    (mat,) = result.asset_materializations_for_node("ops__job_health")
    meta = mat.metadata
    assert meta["runs_24h"].value == 8 and meta["failures_24h"].value == 1
    assert meta["dlq_depth"].value == 2 and meta["jobs_over_sla"].value == 1
    table = meta["summary"].value
    assert "| share-link-expiry | 24h | 7 | 5 | 1 | 1 | 3.0 | 80.8 ⚠ | 60 |" in table
    assert "| share-link-expiry | 7d | 8 | 6 | 1 | 1 | 2.5 |" in table
    assert "| invite-cleanup | 24h | 1 | 1 | 0 | 0 | 0.04 | 0.04 | 60 |" in table
    assert "| tenant-health-check | 24h | 0 | 0 | 0 | 0 | - | - | 600 | - |" in table
    png = meta["chart"].value.split("base64,", 1)[1].rstrip(")")
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
