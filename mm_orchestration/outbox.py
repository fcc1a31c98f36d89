"""The notification outbox, `ops.notification_outbox`: every email the jobs send.

Jobs write outbox rows in the same transaction as the change they report (an
`INSERT ... ON CONFLICT (idempotency_key) DO NOTHING`), so an email exists exactly
when its change does. Delivery then claims pending rows with `FOR UPDATE SKIP
LOCKED`, marks them 'sending' in a committed transaction before calling SendGrid,
and 'sent' right after: two deliverers never take one row, and a deliverer that
dies mid-send leaves the row 'sending', which is later marked failed with an
"outcome unknown" error for an operator, never sent a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mm_orchestration.joblog import log_event, mask_email
from mm_orchestration.resources.database import PortalDatabase
from mm_orchestration.resources.mailer import Email, Mailer, SendError

Renderer = Callable[[str, dict[str, Any]], Email]
"""Turns (idempotency key, row) into the message to send."""

SENDING_LEASE = "15 minutes"
CLAIM_BATCH = 100


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    deferred: int = 0
    abandoned: int = 0
    errors: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, int]:
        return {
            "emails_sent": self.sent,
            "emails_failed": self.failed,
            "emails_suppressed": self.suppressed,
            "emails_deferred": self.deferred,
        }


class DeliveryIncomplete(RuntimeError):
    """Some messages could not be delivered yet (SendGrid busy or down); they stay pending."""


def deliver_pending(
    db: PortalDatabase,
    mailer: Mailer,
    kinds: Sequence[str],
    render: Renderer,
    run_id: str,
) -> DeliveryReport:
    """Deliver every due pending message of `kinds`; each idempotency key at most once."""
    report = DeliveryReport()
    kinds = list(kinds)
    with db.connection() as conn:
        report.abandoned = conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'failed',
                      last_error = 'delivery outcome unknown: the deliverer stopped mid-send. '
                                   || 'Search SendGrid Email Activity for custom arg '
                                   || 'idempotency_key before requeueing.'
                WHERE status = 'sending' AND kind = ANY(%s)
                  AND claimed_at < now() - %s::interval""",
            [kinds, SENDING_LEASE],
        ).rowcount
        report.suppressed = conn.execute(
            """UPDATE ops.notification_outbox o
                  SET status = 'suppressed',
                      last_error = 'recipient is on portal.email_suppressions (' || s.reason || ')'
                 FROM portal.email_suppressions s
                WHERE o.status = 'pending' AND o.kind = ANY(%s)
                  AND lower(s.email) = lower(o.recipient)""",
            [kinds],
        ).rowcount
    tried: list[int] = []  # a message deferred in this call waits for the next call
    while True:
        with db.connection() as conn:
            batch = conn.execute(
                """UPDATE ops.notification_outbox
                      SET status = 'sending', claimed_by = %s, claimed_at = now(),
                          attempts = attempts + 1
                    WHERE id IN (SELECT id FROM ops.notification_outbox
                                  WHERE status = 'pending' AND kind = ANY(%s)
                                    AND next_attempt_at <= now()
                                    AND id <> ALL(%s)
                                  ORDER BY id LIMIT %s
                                  FOR UPDATE SKIP LOCKED)
                RETURNING id, idempotency_key, kind, tenant_id, recipient, payload, attempts""",
                [run_id, kinds, tried, CLAIM_BATCH],
            ).fetchall()
        if not batch:
            break
        tried += [row[0] for row in batch]
        for row in batch:
            _deliver_one(db, mailer, render, row, report)
    if report.errors:
        log_event("email.delivery_incomplete", runId=run_id, deferred=report.deferred)
    return report


def _deliver_one(
    db: PortalDatabase,
    mailer: Mailer,
    render: Renderer,
    row: tuple[Any, ...],
    report: DeliveryReport,
) -> None:
    outbox_id, key, kind, tenant_id, recipient, payload, attempts = row
    fields = {"kind": kind, "key": key, "tenantId": tenant_id, "recipient": mask_email(recipient)}
    try:
        message_id = mailer.send(render(key, {"recipient": recipient, **payload}))
    except SendError as exc:
        with db.connection() as conn:
            if exc.transient:
                # Back to pending: the mailer has already backed off; the op's retry
                # policy (or the next scheduled run) is the next try.
                conn.execute(
                    """UPDATE ops.notification_outbox
                          SET status = 'pending', last_error = %s, claimed_by = NULL
                        WHERE id = %s""",
                    [str(exc), outbox_id],
                )
                report.deferred += 1
            else:
                conn.execute(
                    """UPDATE ops.notification_outbox
                          SET status = 'failed', last_error = %s WHERE id = %s""",
                    [str(exc), outbox_id],
                )
                report.failed += 1
        report.errors.append(f"{key}: {exc}")
        log_event("email.failed", level=30, error=str(exc), transient=exc.transient, **fields)
        return
    except Exception as exc:  # a rendering bug must not strand the row in 'sending'
        with db.connection() as conn:
            conn.execute(
                """UPDATE ops.notification_outbox
                      SET status = 'failed', last_error = %s WHERE id = %s""",
                [f"could not build the message: {type(exc).__name__}: {exc}", outbox_id],
            )
        report.failed += 1
        report.errors.append(f"{key}: {exc}")
        log_event("email.failed", level=40, error=str(exc), **fields)
        return
    with db.connection() as conn:
        conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'sent', sent_at = now(), provider_message_id = %s, last_error = NULL
                WHERE id = %s""",
            [message_id, outbox_id],
        )
    report.sent += 1
    log_event("email.sent", **fields)
