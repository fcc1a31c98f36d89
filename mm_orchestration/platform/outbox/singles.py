"""Delivery of emails one request each: share-link notices, alerts, escalations, the
compliance and health mail (anything with its own subject, text or attachments)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mm_orchestration.monitoring.joblog import log_event, mask_email
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.outbox.delivery import Delivery
from mm_orchestration.platform.outbox.mailer import Email, Mailer
from mm_orchestration.platform.outbox.paging import ReadAhead
from mm_orchestration.platform.outbox.report import DeliveryReport
from mm_orchestration.platform.outbox.rows import FinishedRuns, Row, page
from mm_orchestration.platform.outbox.screening import judge
from mm_orchestration.platform.outbox.sendgrid_client import SendError

Renderer = Callable[[str, dict[str, Any]], Email]
"""Turns (idempotency key, row) into the message to send."""

PAGE_SINGLE = 100


def deliver_pending(
    db: PortalDatabase,
    mailer: Mailer,
    kinds: Sequence[str],
    render: Renderer,
    run_id: str,
    finished: FinishedRuns | None = None,
    must_reach: bool = False,
) -> DeliveryReport:
    """Deliver every due pending message of `kinds`, one request each; each key at most
    once. `finished` says which earlier deliverers' runs have ended (`finished_runs`), so
    the rows they left mid-send are reported at once rather than after the lease.
    `must_reach`: the recipients are our own contacts (alerts, compliance and health
    mail), so a suppressed one fails the message (someone must fix it) rather than
    silencing it."""
    delivery = Delivery(db, kinds, run_id, finished, must_reach)
    try:
        _deliver(delivery, mailer, list(kinds), render)
    finally:
        delivery.close()
    return delivery.report


def _deliver(delivery: Delivery, mailer: Mailer, kinds: list[str], render: Renderer) -> None:
    with ReadAhead(
        lambda after: page(delivery.db, kinds, after, PAGE_SINGLE),
        lambda rows: judge(rows, delivery.suppressions),
    ) as pages:
        for screened in pages:
            if not _deliver_page(delivery, mailer, render, delivery.record(screened)):
                return


def _deliver_page(delivery: Delivery, mailer: Mailer, render: Renderer, rows: list[Row]) -> bool:
    """Send each row of one page (screened); False when delivery must stop."""
    for row in rows:
        try:
            email = render(row.key, {"recipient": row.recipient, **row.payload})
        except Exception as exc:  # a rendering bug costs this row, not the others
            delivery.fail_unbuilt(row, exc)
            continue
        if not delivery.claim([row.id]):
            continue  # another deliverer took it
        fields = {"kind": row.kind, "key": row.key, "tenantId": row.tenant_id}
        try:
            message_id = mailer.send(email)
        except SendError as exc:
            going_on = delivery.settle([row], exc)
            if going_on is False:
                return False
            if going_on is None:  # this message's own refusal (400, 413)...
                if delivery.probing:  # ...unless SendGrid refuses them all alike
                    delivery.probe_refused([row], str(exc))
                    return False
                named = any(name for name, _ in exc.errors)
                if named or exc.status == 413:
                    delivery.fail([(row, str(exc))])  # it named the culprit: this one
                else:
                    delivery.refused_alone(row, str(exc))
            continue
        delivery.accepted_request([row.id], message_id)
        log_event("email.sent", recipient=mask_email(row.recipient), **fields)
    return True
