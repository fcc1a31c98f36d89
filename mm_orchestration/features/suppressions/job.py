"""notification-suppression-cleanup: daily at 01:00, forget old bounces and nothing else.

Deletes `portal.email_suppressions` rows with reason 'bounce' created more than 30
days ago, so an address that bounced once can be mailed again. Unsubscribes, spam
reports and invalid addresses are kept for ever: removing one would break the law
on unsubscribes. Each run writes one `ops.audit_log` entry with the count and the
addresses hashed (SHA-256 of the lower-cased address), never in clear.

With a SendGrid key, the same addresses leave SendGrid's bounce list too, in
batches, inside the deleting transaction: a SendGrid failure rolls the local
deletion back and the run fails (then retries once), never half done without a record.
Addresses SendGrid would refuse as malformed are deleted locally only (SendGrid never
sent to them, so its bounce list cannot hold them), and counted.
"""

from dataclasses import dataclass

import psycopg
from dagster import OpExecutionContext, op

from mm_orchestration.monitoring.joblog import log_event, mask_email
from mm_orchestration.platform import audit, inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.ledger import WindowConfig, ledgered
from mm_orchestration.platform.outbox.addresses import address_problem
from mm_orchestration.platform.outbox.mailer import Mailer
from mm_orchestration.platform.scheduling import inventory_job, retry_policy
from mm_orchestration.platform.sql_files import query

SPEC = inventory.get("notification-suppression-cleanup")
# The tables the job needs; a missing one stops it before any work, named.
TABLES = ("portal.email_suppressions", "ops.audit_log")
BOUNCE_RETENTION = "30 days"

DELETE_OLD_BOUNCES = query(__package__, "delete_old_bounces")


@dataclass(frozen=True)
class Deleted:
    rows: int
    audit_id: int
    addresses: list[str]  # only when asked for (SendGrid needs them)


def delete_old_bounces(
    conn: psycopg.Connection, actor: str, run_id: str, want_addresses: bool = False
) -> Deleted:
    """Delete expired bounces and audit them, in the caller's transaction: the audit entry
    is written the one way every entry is (audit.record: masked and capped)."""
    row = conn.execute(
        DELETE_OLD_BOUNCES, {"retention": BOUNCE_RETENTION, "want_addresses": want_addresses}
    ).fetchone()
    assert row is not None
    audit_id = audit.record(
        conn,
        actor,
        "delete_bounce_suppressions",
        SPEC.name,
        run_id,
        {
            "count": int(row[0]),
            "addresses": int(row[1]),
            "older_than": BOUNCE_RETENTION,
            "sha256": list(row[2] or []),
        },
        outcome="succeeded",
    )
    return Deleted(rows=int(row[0]), audit_id=audit_id, addresses=list(row[3] or []))


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def delete_old_bounce_suppressions(
    context: OpExecutionContext, config: WindowConfig, portal_db: PortalDatabase, mailer: Mailer
) -> int:
    """Delete bounce suppressions older than 30 days, locally and at SendGrid, with an audit."""
    with ledgered(context, portal_db, SPEC.name, TABLES, config.force) as run:
        if run.skipped:
            return 0
        with portal_db.connection() as conn:  # one transaction: delete, audit, SendGrid
            # The person who launched it, else what did (a schedule); never a made-up name.
            window = run.window
            actor = window.actor or (window.trigger if window.trigger != "manual" else "unknown")
            deleted = delete_old_bounces(conn, actor, window.run_id, mailer.uses_sendgrid)
            # SendGrid refuses a whole batch for one malformed address, which would roll
            # every deletion back, run after run. It never sent to such an address, so it
            # has no bounce to forget: those are deleted here only.
            addresses = sorted({a.strip() for a in deleted.addresses if not address_problem(a)})
            requests, refused = mailer.delete_bounces(addresses) if addresses else (0, [])
            # Refused by SendGrid too (it names the address): it cannot hold that bounce.
            not_at_sendgrid = len(deleted.addresses) - len(addresses) + len(refused)
            if refused:
                log_event(
                    "suppression_cleanup.refused_by_sendgrid",
                    level=30,
                    runId=window.run_id,
                    count=len(refused),
                    addresses=[mask_email(a) for a, _ in refused[:20]],
                    reasons=sorted({m for _, m in refused})[:5],
                )
            audit.annotate(
                conn,
                deleted.audit_id,
                {"sendgrid_requests": requests, "not_at_sendgrid": not_at_sendgrid},
            )
        run.rows_affected = deleted.rows
        run.details = {"sendgrid_requests": requests, "invalid_addresses": not_at_sendgrid}
    context.add_output_metadata(
        {
            "bounces_deleted": deleted.rows,
            "sendgrid_requests": requests,
            "invalid_addresses_deleted_locally_only": not_at_sendgrid,
        }
    )
    return deleted.rows


@inventory_job(SPEC, __doc__)
def notification_suppression_cleanup() -> None:
    delete_old_bounce_suppressions()
