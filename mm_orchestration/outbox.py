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

from psycopg.types.json import Jsonb

from mm_orchestration.joblog import log_event, mask_email
from mm_orchestration.resources.database import PortalDatabase
from mm_orchestration.resources.mailer import Email, Mailer, SendError, TemplateRecipient

Renderer = Callable[[str, dict[str, Any]], Email]
"""Turns (idempotency key, row) into the message to send."""


def enqueue(conn: Any, key: str, kind: str, recipient: str, payload: dict[str, Any]) -> bool:
    """Queue one email in the caller's transaction; False when its key is already queued."""
    return bool(
        conn.execute(
            """INSERT INTO ops.notification_outbox (idempotency_key, kind, recipient, payload)
               VALUES (%s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING""",
            [key, kind, recipient, Jsonb(payload)],
        ).rowcount
    )


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
            # Claimed by a deliverer that died mid-send: never resent, an operator checks.
            "emails_outcome_unknown": self.abandoned,
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
    """Deliver every due pending message of `kinds`, one request each; each key at most once."""
    report = _prepare(db, list(kinds))
    after = 0  # claims go in id order; a message deferred in this call waits for the next
    while batch := _claim(db, list(kinds), run_id, after, CLAIM_BATCH):
        after = batch[-1][0]
        for row in batch:
            _deliver_one(db, mailer, render, row, report)
    if report.errors:
        log_event("email.delivery_incomplete", runId=run_id, deferred=report.deferred)
    return report


def deliver_pending_templated(
    db: PortalDatabase,
    mailer: Mailer,
    kind: str,
    template_id: str,
    personalize: Callable[[str, dict[str, Any]], TemplateRecipient],
    run_id: str,
    batch_size: int = 1000,
) -> DeliveryReport:
    """Deliver pending messages of `kind` through a dynamic template, `batch_size` per request.

    A batch SendGrid accepted is marked sent at once, so a later batch's failure never
    sends it again. A refused batch (4xx) is marked failed with SendGrid's message and
    the next batch still goes; a batch SendGrid cannot take now (429/5xx after the
    mailer's own retries) goes back to pending and delivery stops for this attempt.
    """
    report = _prepare(db, [kind])
    after = 0
    while batch := _claim(db, [kind], run_id, after, batch_size):
        ids = [row[0] for row in batch]
        after = ids[-1]
        recipients = [personalize(row[1], {"recipient": row[4], **row[5]}) for row in batch]
        try:
            message_id = mailer.send_template_batch(template_id, recipients)
        except SendError as exc:
            _settle_send_error(db, ids, exc, report, f"batch of {len(ids)}")
            log_event(
                "email.batch_deferred" if exc.transient else "email.batch_failed",
                level=30 if exc.transient else 40,
                kind=kind,
                size=len(ids),
                error=str(exc),
                runId=run_id,
            )
            if exc.transient:
                break  # SendGrid is busy or down: the rest stays pending for the retry
            continue
        _mark(db, ids, "sent", message_id=message_id)
        report.sent += len(ids)
        log_event("email.batch_sent", kind=kind, size=len(ids), runId=run_id)
    return report


def _prepare(db: PortalDatabase, kinds: list[str]) -> DeliveryReport:
    """Settle what earlier deliverers left behind, and suppress what must never go."""
    report = DeliveryReport()
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
    return report


def _claim(
    db: PortalDatabase, kinds: list[str], run_id: str, after: int, limit: int
) -> list[tuple[Any, ...]]:
    """Mark up to `limit` due messages with ids above `after` 'sending' for this run,
    committed before any send. Returned in id order."""
    with db.connection() as conn:
        rows = conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'sending', claimed_by = %s, claimed_at = now(),
                      attempts = attempts + 1
                WHERE id IN (SELECT id FROM ops.notification_outbox
                              WHERE status = 'pending' AND kind = ANY(%s)
                                AND next_attempt_at <= now()
                                AND id > %s
                              ORDER BY id LIMIT %s
                              FOR UPDATE SKIP LOCKED)
            RETURNING id, idempotency_key, kind, tenant_id, recipient, payload, attempts""",
            [run_id, kinds, after, limit],
        ).fetchall()
        return sorted(rows, key=lambda row: row[0])


def _mark(
    db: PortalDatabase,
    ids: list[int],
    status: str,
    error: str | None = None,
    message_id: str | None = None,
) -> None:
    with db.connection() as conn:
        conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = %(status)s,
                      last_error = %(error)s,
                      provider_message_id = coalesce(%(message_id)s, provider_message_id),
                      sent_at = CASE WHEN %(status)s = 'sent' THEN now() END,
                      claimed_by = CASE WHEN %(status)s = 'pending' THEN NULL
                                        ELSE claimed_by END
                WHERE id = ANY(%(ids)s)""",
            {"status": status, "error": error, "message_id": message_id, "ids": ids},
        )


def _settle_send_error(
    db: PortalDatabase, ids: list[int], exc: SendError, report: DeliveryReport, label: str
) -> None:
    """A transient error puts the rows back to pending (the mailer already backed off, so
    the op's retry or the next run is the next try); any other fails them for good."""
    _mark(db, ids, "pending" if exc.transient else "failed", error=str(exc))
    if exc.transient:
        report.deferred += len(ids)
    else:
        report.failed += len(ids)
    report.errors.append(f"{label}: {exc}")


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
        _settle_send_error(db, [outbox_id], exc, report, key)
        log_event("email.failed", level=30, error=str(exc), transient=exc.transient, **fields)
        return
    except Exception as exc:  # a rendering bug must not strand the row in 'sending'
        error = f"could not build the message: {type(exc).__name__}: {exc}"
        _mark(db, [outbox_id], "failed", error=error)
        report.failed += 1
        report.errors.append(f"{key}: {exc}")
        log_event("email.failed", level=40, error=str(exc), **fields)
        return
    _mark(db, [outbox_id], "sent", message_id=message_id)
    report.sent += 1
    log_event("email.sent", **fields)
