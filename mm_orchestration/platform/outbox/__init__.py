"""The notification outbox, `ops.notification_outbox`: every email the jobs send.

The promise: every email is sent once, or is visibly accounted for. Jobs write outbox
rows in the same transaction as the change they report (`enqueue`: `INSERT ... ON
CONFLICT (idempotency_key) DO NOTHING`), so an email exists exactly when its change does.
Delivery then keeps the promise against SendGrid's real behaviour (docs/sendgrid.md):

- A recipient address is checked before any request (email-validator); a malformed or
  empty one is `failed` with the reason, and costs nobody else their email. Suppressed
  recipients are compared case-insensitively, internationalised domains in ASCII form
  (`screening`).
- A row becomes `sending` only for the request being made now, in a durable commit
  (`synchronous_commit = on`) before the request: a crash or a stall leaves at most
  that one request's rows with an unknown outcome; the rest stay `pending` (`rows`).
- Requests are sized by SendGrid's limits together (1,000 personalizations, 1,000
  recipients, bytes well under 30 MB). A 400 naming `personalizations.N` fails only
  that row and the rest go again in a new request; a 400 naming nothing, or a 413,
  halves the request until each refused row is alone (`templated`).
- 429, 408, 425, 5xx and no connection are retried by the mailer; if SendGrid still
  cannot take a request, its rows go back to `pending` and the op's retry (or the next
  run) sends them. A refusal every request would get (a revoked key, a refused sender
  or template) stops delivery and leaves the rows `pending` (`delivery`).
- A request whose answer was lost (written, then a timeout or a reset) may have been
  sent: its rows are `failed` with `outcome_unknown`, their keys named, never resent
  automatically. The key rides in `custom_args`, so SendGrid's activity log finds it.
  Rows a dead deliverer left `sending` are settled the same way (`rows.settle_abandoned`).
- Anything failed for good, or held back, makes the op fail after everything that can go
  has gone (`outcome.conclude`), so the failure sensors alert; `mm-jobs outbox resend`
  requeues failed rows once the data is fixed (same key: nothing sent goes twice).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mm_orchestration.platform.outbox.operator import KIND_SENDERS, list_failed, resend
    from mm_orchestration.platform.outbox.outcome import (
        DeliveryFailed,
        DeliveryIncomplete,
        conclude,
        finished_runs,
        run_failures,
    )
    from mm_orchestration.platform.outbox.report import DeliveryReport
    from mm_orchestration.platform.outbox.rows import enqueue
    from mm_orchestration.platform.outbox.singles import Renderer, deliver_pending
    from mm_orchestration.platform.outbox.templated import deliver_pending_templated

# What the package offers, and the module each comes from. Imported when first asked for
# (PEP 562): the settings read one address rule (`outbox.addresses`) in every `mm-jobs`
# command, and importing the whole outbox for it brought Dagster into commands that never
# run a job (`dlq`, `migrate`), most of their start-up.
_SOURCES = {
    "KIND_SENDERS": "operator",
    "list_failed": "operator",
    "resend": "operator",
    "DeliveryFailed": "outcome",
    "DeliveryIncomplete": "outcome",
    "conclude": "outcome",
    "finished_runs": "outcome",
    "run_failures": "outcome",
    "DeliveryReport": "report",
    "enqueue": "rows",
    "Renderer": "singles",
    "deliver_pending": "singles",
    "deliver_pending_templated": "templated",
}

__all__ = [
    "KIND_SENDERS",
    "DeliveryFailed",
    "DeliveryIncomplete",
    "DeliveryReport",
    "Renderer",
    "conclude",
    "deliver_pending",
    "deliver_pending_templated",
    "enqueue",
    "finished_runs",
    "list_failed",
    "resend",
    "run_failures",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{source}"), name)
