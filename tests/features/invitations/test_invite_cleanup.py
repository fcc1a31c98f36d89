"""invite-cleanup against a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mm_orchestration.features.invitations.job import invite_cleanup
from tests import factories as f
from tests.conftest import run_job

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


def invitation(conn, tenant, age, status="pending"):
    return conn.execute(
        "INSERT INTO portal.invitations (tenant_id, email, role, status, created_at) "
        "VALUES (%s, 'guest@client.example', 'viewer', %s, now() - %s) RETURNING id",
        [tenant, status, age],
    ).fetchone()[0]


def test_invitations_expire_after_72_hours_only(conn, portal_db):
    t = f.tenant(conn)
    young = invitation(conn, t, timedelta(hours=71, minutes=59))
    old = invitation(conn, t, timedelta(hours=72, minutes=1))
    accepted = invitation(conn, t, timedelta(days=10), status="accepted")
    revoked = invitation(conn, t, timedelta(days=10), status="revoked")

    result = run_job(invite_cleanup, {"portal_db": portal_db})

    assert result.success
    state = {
        r[0]: (r[1], r[2] is not None)
        for r in conn.execute("SELECT id, status, expired_at FROM portal.invitations")
    }
    assert state[young] == ("pending", False)
    assert state[old] == ("expired", True)
    assert state[accepted] == ("accepted", False)
    assert state[revoked] == ("revoked", False)
    assert conn.execute("SELECT status, rows_affected FROM ops.job_runs").fetchone() == (
        "succeeded",
        1,
    )
    # A manual rerun is safe: nothing left to expire.
    assert run_job(invite_cleanup, {"portal_db": portal_db}).success
    assert [r[0] for r in conn.execute("SELECT rows_affected FROM ops.job_runs ORDER BY id")] == [
        1,
        0,
    ]
