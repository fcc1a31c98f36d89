"""invite-cleanup: every hour, expire invitations nobody accepted within 72 hours.

A pending invitation created more than 72 hours ago becomes 'expired' with
`expired_at`; accepted, revoked and younger ones are untouched. One set-based
statement, so a manual rerun is always safe: it finds nothing left to expire.
"""

import psycopg
from dagster import OpExecutionContext, op

from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.ledger import WindowConfig, ledgered
from mm_orchestration.platform.scheduling import inventory_job, retry_policy

SPEC = inventory.get("invite-cleanup")
INVITATION_TTL = "72 hours"
TABLES = ("portal.invitations",)

EXPIRE_STALE_INVITATIONS = """
UPDATE portal.invitations
   SET status = 'expired', expired_at = now()
 WHERE status = 'pending' AND created_at < now() - %s::interval
"""


def expire_stale_invitations(conn: psycopg.Connection) -> int:
    """The job's database work, in the caller's transaction. Returns invitations expired."""
    return conn.execute(EXPIRE_STALE_INVITATIONS, [INVITATION_TTL]).rowcount


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def expire_stale_invitations_op(
    context: OpExecutionContext, config: WindowConfig, portal_db: PortalDatabase
) -> int:
    """Expire pending invitations older than 72 hours."""
    with ledgered(context, portal_db, SPEC.name, TABLES, config.force) as run:
        if run.skipped:
            return 0
        with portal_db.connection() as conn:
            run.rows_affected = expire_stale_invitations(conn)
    context.add_output_metadata({"invitations_expired": run.rows_affected})
    return run.rows_affected


@inventory_job(SPEC, __doc__)
def invite_cleanup() -> None:
    expire_stale_invitations_op()
