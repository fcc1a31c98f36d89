"""Migrations: versioned, recorded, idempotent; the portal DDL only when asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance

from mm_orchestration.features.share_links.job import share_link_expiry
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import MissingTableError, connect
from mm_orchestration.platform.migrate import available, migrate
from mm_orchestration.platform.outbox.mailer import Mailer
from tests.conftest import create_database, drop_database

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


@pytest.fixture
def empty_db(pg_server):
    name = create_database(pg_server, template=None)
    yield pg_server.url(name)
    drop_database(pg_server, name)


def test_migrations_twice_are_a_no_op(empty_db):
    with connect(empty_db, autocommit=True) as conn:
        first = migrate(conn, with_portal_schema=True)
        second = migrate(conn, with_portal_schema=True)
        recorded = [r[0] for r in conn.execute("SELECT name FROM ops.schema_migrations ORDER BY 1")]
    assert first == [m.name for m in available(True)]
    assert second == []
    assert recorded == sorted(first)


def test_ops_only_never_creates_portal_tables(empty_db):
    with connect(empty_db, autocommit=True) as conn:
        applied = migrate(conn)
        assert all(name.startswith("ops/") for name in applied)
        assert conn.execute("SELECT to_regclass('portal.share_links')").fetchone()[0] is None
        assert conn.execute("SELECT to_regclass('ops.job_runs')").fetchone()[0] is not None


def test_job_without_portal_schema_fails_naming_the_table(empty_db, tmp_path):
    with connect(empty_db, autocommit=True) as conn:
        migrate(conn)
    db = PortalDatabase(url=empty_db)
    with DagsterInstance.ephemeral() as instance:
        result = share_link_expiry.execute_in_process(
            resources={"portal_db": db, "mailer": Mailer(mail_dir=str(tmp_path))},
            instance=instance,
            raise_on_error=False,
        )
    db.close()
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message
    assert "portal.share_links" in message and "--with-portal-schema" in message


def test_require_tables_lists_every_missing_one(empty_db):
    from mm_orchestration.platform.db import require_tables

    with connect(empty_db, autocommit=True) as conn:
        with pytest.raises(MissingTableError) as err:
            require_tables(conn, ["portal.users", "portal.events"])
    assert "portal.users" in str(err.value) and "portal.events" in str(err.value)


def test_contract_columns_accept_a_minimal_row(conn):
    """A row written with only the contract's columns is valid (defaults fill the rest)."""
    t = conn.execute(
        "INSERT INTO portal.tenants (id, name, slug, status, data_region, created_at)"
        " VALUES (gen_random_uuid(), 'A', 'a', 'active', 'ap-southeast-2', now())"
        " RETURNING id"
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO ops.job_runs (job_name, window_key, run_id, status) "
        "VALUES ('x', 'w', 'r', 'succeeded')"
    )
    conn.execute(
        "INSERT INTO ops.notification_outbox (idempotency_key, kind, tenant_id, "
        "recipient, payload) VALUES ('k', 'k', %s, 'a@b.example', '{}')",
        [t],
    )
    when = datetime.now(UTC) - timedelta(days=1)
    conn.execute(
        "INSERT INTO portal.mux_webhook_dlq (event_id, event_type, payload, received_at)"
        " VALUES ('e1', 'video.asset.ready', '{}', %s)",
        [when],
    )
    assert conn.execute("SELECT status, attempts FROM portal.mux_webhook_dlq").fetchone() == (
        "pending",
        0,
    )
