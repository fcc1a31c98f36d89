"""Every job runs as a role that has only what `mm-jobs grants` gives it."""

from __future__ import annotations

import uuid

import pytest
from dagster import DagsterInstance, materialize
from psycopg import sql

from mm_orchestration.features.analytics.asset import analytics_hourly
from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.features.invitations.job import invite_cleanup
from mm_orchestration.features.mux_dlq.job import mux_webhook_retry
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.features.residency.asset import residency_report
from mm_orchestration.features.restore_drill.job import backup_verify
from mm_orchestration.features.retention.job import storage_retention
from mm_orchestration.features.share_links.job import share_link_expiry
from mm_orchestration.features.suppressions.job import notification_suppression_cleanup
from mm_orchestration.features.tenant_health.asset import tenant_health_daily
from mm_orchestration.local.demo_data import seed_demo
from mm_orchestration.monitoring.alerts import send_alert
from mm_orchestration.monitoring.job_health import job_health
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.grants import statements
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox.mailer import Mailer
from mm_orchestration.platform.report_store import ReportStore
from tests.conftest import session_drill

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


# Every job of the inventory, run as the application's role: an op job as a job, an
# asset job by materialising its asset at a partition.
OP_JOBS = [
    share_link_expiry,
    notification_digest,
    invite_cleanup,
    notification_suppression_cleanup,
    mux_webhook_retry,
    backup_verify,
    storage_retention,
]
ASSETS = [
    (analytics_hourly, "2026-11-20-10:00"),
    (tenant_health_daily, "2026-11-20"),
    (residency_report, "2026-11-16"),
    (job_health, None),
]
ASSET_JOBS = {"analytics_rollup", "tenant_health_check", "residency_report"}


def test_the_lists_here_hold_every_job_of_the_inventory():
    """A new job of the inventory fails here until it is added above: a job nobody ran as
    the application's role would find its missing grant in production."""
    listed = {job.name for job in OP_JOBS} | ASSET_JOBS
    assert listed == {spec.dagster_name for spec in inventory.INVENTORY}, (
        "add the job to OP_JOBS (or its asset to ASSETS) and its tables to platform/grants.py"
    )


@pytest.fixture
def role_url(pg_server, database_url):
    role = f"mm_jobs_{uuid.uuid4().hex[:8]}"
    with connect(database_url, autocommit=True) as conn:
        seed_demo(conn)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for statement in statements(role):
            conn.execute(statement)
    yield database_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    with connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_every_job_succeeds_with_only_its_grants(role_url, tmp_path):
    db = PortalDatabase(url=role_url)
    resources = {
        "portal_db": db,
        "mailer": Mailer(mail_dir=str(tmp_path / "mail")),
        "job_settings": JobSettings(),
        "mux": MuxWebhooks(),
        "report_store": ReportStore(root=str(tmp_path / "reports")),
        "restore_drill": session_drill(),
    }
    alert = {"ops": {"record_alert": {"config": {"key": "k", "subject": "s", "body": "b"}}}}
    try:
        with DagsterInstance.ephemeral() as instance:
            for job, config in [*((j, None) for j in OP_JOBS), (send_alert, alert)]:
                result = job.execute_in_process(
                    instance=instance,
                    resources=resources,
                    run_config=config or {},
                    raise_on_error=False,
                )
                failures = [e.message for e in result.all_events if e.is_step_failure]
                assert result.success, f"{job.name}: {failures}"
            for asset, partition in ASSETS:
                result = materialize(
                    [asset],
                    instance=instance,
                    resources=resources,
                    partition_key=partition,
                    raise_on_error=False,
                )
                assert result.success, asset.key
    finally:
        db.close()
    with connect(role_url, autocommit=True) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM ops.backup_drills WHERE status = 'succeeded'"
            ).fetchone()[0]
            == 1
        )
        # ...and nothing beyond the grants: no column the jobs do not change.
        with pytest.raises(Exception, match="permission denied"):
            conn.execute("UPDATE portal.tenants SET name = 'x'")
        with pytest.raises(Exception, match="permission denied"):
            conn.execute("DELETE FROM portal.share_links")
        with pytest.raises(Exception, match="permission denied"):
            conn.execute("UPDATE portal.share_links SET view_count = 0")


def test_compliance_evidence_is_added_to_never_changed_or_deleted(role_url):
    """Restore drills and evidence bundles are only inserted and read; a residency report
    is replaced only by its week's rerun (never renamed to another week), and none of the
    three is ever deleted by the jobs' role."""
    with connect(role_url, autocommit=True) as conn:
        for statement in (
            "UPDATE ops.backup_drills SET status = 'succeeded'",
            "DELETE FROM ops.backup_drills",
            "TRUNCATE ops.backup_drills",
            "UPDATE ops.evidence_bundles SET sha256 = 'x'",
            "DELETE FROM ops.evidence_bundles",
            "UPDATE ops.residency_reports SET week_start = week_start",
            "DELETE FROM ops.residency_reports",
            "CREATE TABLE ops.mine (x int)",
        ):
            with pytest.raises(Exception, match="permission denied"):
                conn.execute(statement)
        conn.execute("UPDATE ops.residency_reports SET emailed_at = emailed_at")
