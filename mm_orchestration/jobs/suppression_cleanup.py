"""notification-suppression-cleanup: daily at 01:00, forget old bounces and nothing else.

Deletes `portal.email_suppressions` rows with reason 'bounce' created more than 30
days ago, so an address that bounced once can be mailed again. Unsubscribes, spam
reports and invalid addresses are kept for ever: removing one would break the law
on unsubscribes. Each run writes one `ops.audit_log` entry with the count and the
addresses hashed (SHA-256 of the lower-cased address), never in clear.

With a SendGrid key, the same addresses leave SendGrid's bounce list too, in
batches, inside the deleting transaction: a SendGrid failure rolls the local
deletion back and the run fails (then retries once), never half done without a record.
"""

import psycopg
from dagster import OpExecutionContext, job, op
from psycopg.types.json import Jsonb

from mm_orchestration import inventory
from mm_orchestration.ledger import WindowConfig, claim, window_for
from mm_orchestration.resources import Mailer, PortalDatabase
from mm_orchestration.scheduling import job_tags, retry_policy

SPEC = inventory.get("notification-suppression-cleanup")
BOUNCE_RETENTION = "30 days"

DELETE_OLD_BOUNCES = """
DELETE FROM portal.email_suppressions
 WHERE reason = 'bounce' AND created_at < now() - %s::interval
RETURNING lower(email), encode(sha256(convert_to(lower(email), 'UTF8')), 'hex')
"""


def delete_old_bounces(conn: psycopg.Connection) -> tuple[int, list[str], list[str]]:
    """Delete expired bounces in the caller's transaction.

    Returns (rows deleted, distinct addresses, their SHA-256 hashes)."""
    rows = conn.execute(DELETE_OLD_BOUNCES, [BOUNCE_RETENTION]).fetchall()
    return len(rows), sorted({r[0] for r in rows}), sorted({r[1] for r in rows})


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def delete_old_bounce_suppressions(
    context: OpExecutionContext, config: WindowConfig, portal_db: PortalDatabase, mailer: Mailer
) -> int:
    """Delete bounce suppressions older than 30 days, locally and at SendGrid, with an audit."""
    portal_db.require("portal.email_suppressions", "ops.audit_log")
    window = window_for(context, SPEC.name)
    with claim(portal_db, window, force=config.force) as run:
        if run.skipped:
            context.log.info(f"Skipped: {run.reason}")
            return 0
        with portal_db.connection() as conn:  # one transaction: delete, SendGrid, audit
            deleted, addresses, hashes = delete_old_bounces(conn)
            requests = mailer.delete_bounces(addresses) if addresses else 0
            conn.execute(
                """INSERT INTO ops.audit_log (actor, action, job_name, run_id, details)
                   VALUES (%s, 'delete_bounce_suppressions', %s, %s, %s)""",
                [
                    window.actor or "schedule",
                    SPEC.name,
                    window.run_id,
                    Jsonb(
                        {
                            "count": deleted,
                            "addresses": len(hashes),
                            "older_than": BOUNCE_RETENTION,
                            "sha256": hashes,
                            "sendgrid_requests": requests,
                        }
                    ),
                ],
            )
        run.rows_affected = deleted
        run.details = {"addresses": len(hashes), "sendgrid_requests": requests}
    context.add_output_metadata(
        {"bounces_deleted": deleted, "addresses": len(hashes), "sendgrid_requests": requests}
    )
    return deleted


@job(name=SPEC.dagster_name, description=__doc__, tags=job_tags(SPEC))
def notification_suppression_cleanup() -> None:
    delete_old_bounce_suppressions()
