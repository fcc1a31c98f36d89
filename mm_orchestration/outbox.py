"""The notification outbox, `ops.notification_outbox`: every email the jobs send.

The promise: every email is sent once, or is visibly accounted for. Jobs write outbox
rows in the same transaction as the change they report (`INSERT ... ON CONFLICT
(idempotency_key) DO NOTHING`), so an email exists exactly when its change does.
Delivery then keeps the promise against SendGrid's real behaviour (docs/sendgrid.md):

- A recipient address is checked before any request (email-validator); a malformed or
  empty one is `failed` with the reason, and costs nobody else their email.
- A row becomes `sending` only for the request being made now, in a durable commit
  (`synchronous_commit = on`) before the request: a crash or a stall leaves at most
  that one request's rows with an unknown outcome; the rest stay `pending`.
- Requests are sized by SendGrid's limits together (1,000 personalizations, 1,000
  recipients, bytes well under 30 MB). A 400 naming `personalizations.N` fails only
  that row and the rest go again in a new request; a 400 naming nothing, or a 413,
  splits the request in halves until the culprit is alone.
- 429, 5xx and no connection are retried by the mailer; if SendGrid still cannot take a
  request, its rows go back to `pending` and the op's retry (or the next run) sends them.
- A request whose answer was lost (written, then a timeout or a reset) may have been
  sent: its rows are `failed` with `outcome_unknown`, their keys named, never resent
  automatically. The key rides in `custom_args`, so SendGrid's activity log finds it.
- Anything failed for good makes the op fail after everything that can go has gone
  (`conclude`), so the failure sensors alert; `mm-jobs outbox resend` requeues failed
  rows once the data is fixed (same key: nothing that was sent goes twice).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from dagster import Failure, MetadataValue
from psycopg import sql
from psycopg.types.json import Jsonb

from mm_orchestration.addresses import address_problem
from mm_orchestration.joblog import log_event, mask_email
from mm_orchestration.resources.database import PortalDatabase
from mm_orchestration.resources.mailer import (
    MAX_PERSONALIZATIONS,
    MAX_RECIPIENTS,
    Email,
    Mailer,
    SendError,
    TemplateRecipient,
    plan_requests,
    request_bytes,
)

Renderer = Callable[[str, dict[str, Any]], Email]
"""Turns (idempotency key, row) into the message to send."""

SENDING_LEASE = "15 minutes"
# Rows read per page; a template page is several requests' worth, so that only the last
# request of a page may be short (requests per 1,000 people stay near 1).
PAGE_SINGLE = 100
PAGES_OF_TEMPLATE_REQUESTS = 10
# After this many lost answers in a row SendGrid is not answering: stop, keep the rest
# pending, rather than spend a read timeout and an unknown outcome on every request.
MAX_UNKNOWN_IN_A_ROW = 2
# A split whose parent, halves and quarters were all refused without naming a field
# was refused for something of the request itself (not a row's): stop splitting.
SPLIT_REFUSALS_BEFORE_GIVING_UP = 7
KEYS_SHOWN = 100

UNKNOWN_HINT = (
    "Search SendGrid Email Activity for custom arg idempotency_key={key} before resending "
    "(mm-jobs outbox resend --include-unknown)."
)


# Which job delivers each kind of email (its next run sends what `resend` requeued).
KIND_SENDERS = {
    "digest": "notification-digest",
    "share_link_expired": "share-link-expiry",
    "mux_dlq_dead": "mux-webhook-retry",
    "alert": "send_alert",
    "tenant_health_summary": "tenant-health-check",
    "residency_report": "residency-report",
}


def enqueue(
    conn: Any,
    key: str,
    kind: str,
    recipient: str,
    payload: dict[str, Any],
    user_id: Any = None,
) -> bool:
    """Queue one email in the caller's transaction; False when its key is already queued."""
    return bool(
        conn.execute(
            """INSERT INTO ops.notification_outbox
                   (idempotency_key, kind, recipient, payload, user_id)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING""",
            [key, kind, recipient, Jsonb(payload), user_id],
        ).rowcount
    )


@dataclass
class DeliveryReport:
    """What one delivery call did; `conclude` turns it (and the run's rows) into an outcome."""

    sent: int = 0
    failed: int = 0  # refused by SendGrid, or the message could not be built
    invalid: int = 0  # malformed or empty address: never sent
    unknown: int = 0  # the answer was lost: may have been sent
    suppressed: int = 0
    deferred: int = 0  # SendGrid could not take them now: back to pending
    abandoned: int = 0  # left 'sending' by a deliverer that died: outcome unknown
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)
    stopped: str = ""  # why delivery stopped early (the rest stays pending)
    stopped_for_good: bool = False  # a refusal no retry fixes (401, 403, the request)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "emails_sent": self.sent,
            "emails_failed": self.failed,
            "emails_invalid_address": self.invalid,
            "emails_suppressed": self.suppressed,
            "emails_deferred": self.deferred,
            # The answer was lost, or the deliverer died mid-send: never resent, an operator
            # checks SendGrid's activity log for the key.
            "emails_outcome_unknown": self.unknown + self.abandoned,
            "sendgrid_requests": self.requests,
        }


class DeliveryIncomplete(Failure):
    """Some messages could not be delivered yet (SendGrid busy or down); they stay
    pending, and the op's retry (or the next run) sends them."""

    def __init__(self, description: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(description=description, metadata=metadata, allow_retries=True)


class DeliveryFailed(Failure):
    """Some messages failed for good in this run; everything else was sent. No retry
    fixes this (an operator fixes the data, then `mm-jobs outbox resend`)."""

    def __init__(self, description: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(description=description, metadata=metadata, allow_retries=False)


@dataclass(frozen=True)
class _Row:
    id: int
    key: str
    kind: str
    tenant_id: Any
    recipient: str
    payload: Any  # a dict, or the JSON text as stored (`_page(raw=True)`)


# -- delivery ----------------------------------------------------------------------


def deliver_pending(
    db: PortalDatabase,
    mailer: Mailer,
    kinds: Sequence[str],
    render: Renderer,
    run_id: str,
) -> DeliveryReport:
    """Deliver every due pending message of `kinds`, one request each; each key at most once."""
    report = _prepare(db, list(kinds), run_id)
    accepted: list[tuple[list[int], str]] = []  # marked 'sent' with the next claim
    try:
        return _deliver_singles(db, mailer, kinds, render, run_id, report, accepted)
    finally:
        _flush_sent(db, accepted)


def _deliver_singles(
    db: PortalDatabase,
    mailer: Mailer,
    kinds: Sequence[str],
    render: Renderer,
    run_id: str,
    report: DeliveryReport,
    accepted: list[tuple[list[int], str]],
) -> DeliveryReport:
    after, unknown_in_a_row = 0, 0
    while page := _page(db, list(kinds), after, PAGE_SINGLE):
        after = page[-1].id
        for row in _reject_invalid(db, page, run_id, report):
            fields = {"kind": row.kind, "key": row.key, "tenantId": row.tenant_id}
            try:
                email = render(row.key, {"recipient": row.recipient, **row.payload})
            except Exception as exc:  # a rendering bug costs this row, not the others
                _fail(
                    db,
                    [(row.id, f"could not build the message: {type(exc).__name__}: {exc}")],
                    run_id,
                )
                report.failed += 1
                report.errors.append(f"{row.key}: {exc}")
                log_event("email.failed", level=40, error=str(exc), **fields)
                continue
            claimed = _claim(db, [row.id], run_id, accepted)
            accepted.clear()
            if not claimed:
                continue  # another deliverer took it
            report.requests += 1
            try:
                message_id = mailer.send(email)
            except SendError as exc:
                log_event(
                    "email.failed",
                    level=30,
                    error=str(exc),
                    transient=exc.transient,
                    recipient=mask_email(row.recipient),
                    **fields,
                )
                if exc.unknown:
                    _fail_unknown(db, [row], str(exc), run_id, report)
                    unknown_in_a_row += 1
                    if unknown_in_a_row >= MAX_UNKNOWN_IN_A_ROW:
                        report.stopped = f"SendGrid lost {unknown_in_a_row} answers in a row"
                        return report
                    continue
                if exc.transient:
                    _release(db, [row.id], str(exc))
                    report.deferred += 1
                    report.errors.append(f"{row.key}: {exc}")
                    report.stopped = str(exc)
                    return report  # SendGrid is busy or down: the rest waits too
                _fail(db, [(row.id, str(exc))], run_id)
                report.failed += 1
                report.errors.append(f"{row.key}: {exc}")
                # One message per request: a 400 or 413 is this message's own fault; a
                # revoked key or a refused sender would refuse every other one too.
                if exc.status in (401, 403):
                    report.stopped, report.stopped_for_good = str(exc), True
                    return report  # every other request would be refused the same way
                continue
            unknown_in_a_row = 0
            accepted.append(([row.id], message_id))
            report.sent += 1
            log_event("email.sent", recipient=mask_email(row.recipient), **fields)
    return report


def deliver_pending_templated(
    db: PortalDatabase,
    mailer: Mailer,
    kind: str,
    template_id: str,
    personalize: Callable[[str, dict[str, Any]], TemplateRecipient] | None,
    run_id: str,
    batch_size: int = MAX_PERSONALIZATIONS,
) -> DeliveryReport:
    """Deliver pending messages of `kind` through a dynamic template, as few requests as
    SendGrid's limits allow (at most `batch_size` people each).

    `personalize(key, row)` builds each person's template data; None means the stored
    payload *is* the template data, sent as the database wrote it (never decoded and
    encoded again in Python: at 100,000 people that is most of the delivery's time).

    A request SendGrid accepted is marked sent at once, so a later request's failure never
    sends it again. A refused row fails alone (see the module's docstring); a request
    SendGrid cannot take now goes back to pending and delivery stops for this attempt.
    """
    report = _prepare(db, [kind], run_id)
    envelope = mailer.template_envelope(template_id)
    sender = _TemplateSender(db, mailer, template_id, run_id, report)
    page_size = batch_size * PAGES_OF_TEMPLATE_REQUESTS
    after = 0
    while page := _page(db, [kind], after, page_size, raw=personalize is None):
        after = page[-1].id
        items: list[_Item] = []
        for row in _reject_invalid(db, page, run_id, report):
            try:
                if personalize is None:
                    text = mailer.raw_personalization(row.key, row.recipient, row.payload)
                    people = 1
                else:
                    data = personalize(row.key, {"recipient": row.recipient, **row.payload})
                    part = mailer.personalization(data)
                    text = json.dumps(part)  # serialised once: measured here, sent as is
                    people = _people(part)
                items.append(_Item(row, text, len(text.encode()), people))
            except Exception as exc:  # one row's bad data costs that row alone
                _fail(
                    db,
                    [(row.id, f"could not build the message: {type(exc).__name__}: {exc}")],
                    run_id,
                )
                report.failed += 1
                report.errors.append(f"{row.key}: {exc}")
        plans = plan_requests(
            [(i.people, i.size) for i in items],
            request_bytes(envelope, []),
            max_personalizations=min(batch_size, MAX_PERSONALIZATIONS),
            max_recipients=MAX_RECIPIENTS,
            max_bytes=mailer.max_request_bytes,
        )
        try:
            for plan in plans:
                if not sender.deliver([items[i] for i in plan]):
                    return report  # stopped: what is left stays pending
        finally:
            sender.flush()
    return report


@dataclass(frozen=True)
class _Item:
    row: _Row
    part: str  # the personalization as JSON
    size: int
    people: int


def _people(part: dict[str, Any]) -> int:
    return sum(len(part.get(k) or []) for k in ("to", "cc", "bcc"))


def _account_refused(exc: SendError) -> bool:
    """A refusal of the account or of the request itself, which every request would get:
    a revoked key (401), a refused sender (403), a 4xx naming a field outside the
    personalizations (from, template_id), or another 4xx (404, 405, 415...)."""
    if exc.status in (401, 403):
        return True
    if exc.status in (400, 413):
        return exc.names_other_fields
    return exc.status is not None and 400 <= exc.status < 500


class _TemplateSender:
    """Sends one planned request's rows, isolating refused rows (module docstring)."""

    def __init__(
        self, db: PortalDatabase, mailer: Mailer, template_id: str, run_id: str, report: Any
    ) -> None:
        self.db, self.mailer, self.template_id = db, mailer, template_id
        self.run_id, self.report = run_id, report
        self.unknown_in_a_row = 0
        # Accepted requests not yet marked 'sent': marked in the next claim's commit (or by
        # `flush`). A crash in between leaves at most that one request's rows 'sending',
        # reported as outcome unknown: never sent twice.
        self.accepted: list[tuple[list[int], str]] = []

    def flush(self) -> None:
        """Mark the accepted requests 'sent' now."""
        _flush_sent(self.db, self.accepted)

    def deliver(self, items: list[_Item]) -> bool:
        """Send `items` (pending rows); False when delivery must stop for this attempt."""
        work: deque[list[_Item]] = deque([items])
        refusals_without_success = 0
        while work:
            group = work.popleft()
            claimed = _claim(self.db, [i.row.id for i in group], self.run_id, self.accepted)
            self.accepted.clear()
            group = [i for i in group if i.row.id in claimed]  # others: another deliverer's
            if not group:
                continue
            self.report.requests += 1
            try:
                message_id = self.mailer.send_template(self.template_id, [i.part for i in group])
            except SendError as exc:
                outcome = self._refused(group, exc, work, refusals_without_success)
                if outcome is None:
                    return False
                refusals_without_success = outcome
                continue
            refusals_without_success = 0
            self.unknown_in_a_row = 0
            self.accepted.append(([i.row.id for i in group], message_id))
            self.report.sent += len(group)
            log_event(
                "email.batch_sent", kind=group[0].row.kind, size=len(group), runId=self.run_id
            )
        return True

    def _refused(
        self, group: list[_Item], exc: SendError, work: deque[list[_Item]], refusals: int
    ) -> int | None:
        """Settle a request SendGrid did not take. Returns the split's refusal count, or
        None when delivery must stop."""
        db, report, run_id = self.db, self.report, self.run_id
        kind = group[0].row.kind
        log_event(
            "email.batch_refused" if not exc.transient else "email.batch_deferred",
            level=40 if not exc.transient else 30,
            kind=kind,
            size=len(group),
            status=exc.status,
            error=str(exc),
            runId=run_id,
        )
        if exc.unknown:
            _fail_unknown(db, [i.row for i in group], str(exc), run_id, report)
            self.unknown_in_a_row += 1
            if self.unknown_in_a_row >= MAX_UNKNOWN_IN_A_ROW:
                report.stopped = f"SendGrid lost {self.unknown_in_a_row} answers in a row"
                self._release_rest(work, report.stopped)
                return None
            return 0
        if exc.transient:
            _release(db, [i.row.id for i in group], str(exc))
            report.deferred += len(group)
            report.errors.append(f"request of {len(group)}: {exc}")
            report.stopped = str(exc)
            self._release_rest(work, str(exc))
            return None
        named = {n: m for n, m in exc.named_personalizations().items() if n < len(group)}
        if exc.status == 400 and named and not exc.names_other_fields:
            culprits = [(group[n].row.id, f"SendGrid 400: {m}") for n, m in named.items()]
            rest = [item for n, item in enumerate(group) if n not in named]
            _fail(db, culprits, run_id, release=[i.row.id for i in rest])
            report.failed += len(culprits)
            report.errors += [f"{group[n].row.key}: SendGrid 400: {m}" for n, m in named.items()]
            if rest:
                work.appendleft(rest)  # the others, again, in a new request
            return 0
        if _account_refused(exc):
            _fail(db, [(i.row.id, str(exc)) for i in group], run_id)
            report.failed += len(group)
            report.errors.append(f"request of {len(group)}: {exc}")
            report.stopped, report.stopped_for_good = str(exc), True
            self._release_rest(work, str(exc))
            return None
        # A 400 naming no row, or a 413: the culprit is somewhere in here. Halve.
        refusals += 1
        if len(group) == 1:
            _fail(db, [(group[0].row.id, str(exc))], run_id)
            report.failed += 1
            report.errors.append(f"{group[0].row.key}: {exc}")
            return refusals
        if refusals >= SPLIT_REFUSALS_BEFORE_GIVING_UP:
            # Every part was refused alike: it is the request, not a row. Stop here.
            parts: list[list[_Item]] = [group, *work]
            work.clear()
            failed = [(i.row.id, str(exc)) for part in parts for i in part]
            _fail(db, failed, run_id)
            report.failed += len(failed)
            report.errors.append(f"request of {len(failed)}: {exc}")
            report.stopped, report.stopped_for_good = str(exc), True
            return None
        half = len(group) // 2
        _release(db, [i.row.id for i in group], str(exc))  # pending until their own request
        work.append(group[:half])
        work.append(group[half:])
        return refusals

    def _release_rest(self, work: deque[list[_Item]], error: str) -> None:
        """Parts of a split not sent yet are pending already; nothing else to undo."""
        work.clear()


# -- the run's outcome ---------------------------------------------------------------


@dataclass(frozen=True)
class RunFailures:
    """Every row of `kinds` that failed for good in one run (across its op's retries)."""

    total: int
    by_reason: dict[str, int]
    unknown_keys: list[str]
    examples: list[str]


def run_failures(db: PortalDatabase, kinds: Sequence[str], run_id: str) -> RunFailures:
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT CASE WHEN outcome_unknown THEN 'outcome unknown'
                           ELSE split_part(coalesce(last_error, 'failed'), ':', 1) END,
                      count(*),
                      (array_agg(idempotency_key ORDER BY id)
                          FILTER (WHERE outcome_unknown))[1:%(shown)s],
                      (array_agg(idempotency_key || ': ' || coalesce(last_error, '')
                                 ORDER BY id))[1:3]
                 FROM ops.notification_outbox
                WHERE failed_run_id = %(run_id)s AND status = 'failed'
                  AND kind = ANY(%(kinds)s)
                GROUP BY 1 ORDER BY 2 DESC, 1""",
            {"run_id": run_id, "kinds": list(kinds), "shown": KEYS_SHOWN},
        ).fetchall()
    return RunFailures(
        total=sum(int(r[1]) for r in rows),
        by_reason={str(r[0]): int(r[1]) for r in rows},
        unknown_keys=[k for r in rows for k in (r[2] or [])],
        examples=[e for r in rows for e in (r[3] or [])][:3],
    )


def conclude(
    db: PortalDatabase,
    report: DeliveryReport,
    kinds: Sequence[str],
    run_id: str,
    what: str,
    escalate: Callable[[str], None] | None = None,
    final_attempt: bool = True,
    tolerate_deferred: bool = False,
) -> dict[str, Any]:
    """The op's outcome from its delivery: the metadata when every email of `kinds` went;
    DeliveryIncomplete (retried) when some wait for SendGrid; DeliveryFailed (no retry)
    when some failed for good in this run: invalid addresses, refusals, lost answers.
    Either way everything that could go went first. `escalate(message)` is called before
    the op fails for good (the job names who acts). `tolerate_deferred`: an asset whose
    next materialisation delivers what waits (the residency report) does not fail for it."""
    failures = run_failures(db, kinds, run_id)
    metadata: dict[str, Any] = dict(report.as_metadata())
    metadata["emails_failed_for_good_this_run"] = failures.total
    for reason, count in failures.by_reason.items():
        metadata[f"failed: {reason}"] = count
    if failures.unknown_keys:
        metadata["outcome_unknown_keys"] = MetadataValue.md(
            "\n".join(f"- `{k}`" for k in failures.unknown_keys)
        )
    hint = (
        f"fix the data, then `mm-jobs outbox resend --kind {kinds[0]} --since <when>`; "
        "`mm-jobs outbox list --unknown` lists the keys to look up in SendGrid first"
    )
    failed_text = ""
    if failures.total:
        reasons = ", ".join(f"{n} {reason}" for reason, n in failures.by_reason.items())
        failed_text = f"{failures.total} {what}(s) failed for good ({reasons})"
        if failures.unknown_keys:
            shown = ", ".join(failures.unknown_keys[:5])
            more = len(failures.unknown_keys) - 5
            failed_text += f"; outcome unknown keys: {shown}" + (
                f" and {more} more" if more > 0 else ""
            )
        if failures.examples:
            failed_text += f"; first: {failures.examples[0]}"
    waiting = report.deferred or (report.stopped and not report.stopped_for_good)
    if waiting and not tolerate_deferred:
        pending = report.deferred or "some"
        message = f"{pending} {what}(s) could not be delivered yet and stay pending"
        if report.stopped:
            message += f" ({report.stopped})"
        if failed_text:
            message += f"; {failed_text}"
        if final_attempt and escalate is not None:
            escalate(message)
        raise DeliveryIncomplete(message, metadata)
    if failures.total or report.stopped_for_good:
        message = failed_text or f"SendGrid refused the {what}s"
        if report.stopped_for_good:
            message += f"; delivery stopped: {report.stopped} (the rest stays pending)"
        message = f"{message.rstrip('.')}. {hint}"
        if escalate is not None:
            escalate(message)
        raise DeliveryFailed(message, metadata)
    return metadata


# -- rows ----------------------------------------------------------------------------


@contextmanager
def _durable(db: PortalDatabase) -> Iterator[psycopg.Connection]:
    """A transaction whose commit is on disk before it returns, whatever the server's or
    role's default: the `sending` mark must survive a database crash, or the row would
    look pending again and go twice."""
    with db.connection() as conn:
        conn.execute("SET LOCAL synchronous_commit = on")
        yield conn


def _prepare(db: PortalDatabase, kinds: list[str], run_id: str) -> DeliveryReport:
    """Settle what earlier deliverers left behind, and suppress what must never go."""
    report = DeliveryReport()
    with _durable(db) as conn:
        report.abandoned = conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'failed', outcome_unknown = true,
                      failed_at = now(), failed_run_id = %s,
                      last_error = 'delivery outcome unknown: the deliverer (run '
                                   || coalesce(claimed_by, '?') || ') stopped mid-send. '
                                   || replace(%s, '{key}', idempotency_key)
                WHERE status = 'sending' AND kind = ANY(%s)
                  AND claimed_at < now() - %s::interval""",
            [run_id, UNKNOWN_HINT, kinds, SENDING_LEASE],
        ).rowcount
        report.suppressed = conn.execute(
            """UPDATE ops.notification_outbox o
                  SET status = 'suppressed',
                      last_error = 'recipient is on portal.email_suppressions (' || s.reason || ')'
                 FROM portal.email_suppressions s
                WHERE o.status = 'pending' AND o.kind = ANY(%s)
                  AND lower(btrim(s.email)) = lower(btrim(o.recipient))""",
            [kinds],
        ).rowcount
    if report.abandoned:
        log_event(
            "email.outcome_unknown",
            level=40,
            kinds=kinds,
            count=report.abandoned,
            runId=run_id,
            reason="deliverer stopped mid-send",
        )
    return report


def _page(
    db: PortalDatabase, kinds: list[str], after: int, limit: int, raw: bool = False
) -> list[_Row]:
    """Up to `limit` due pending rows with ids above `after`, in id order; not claimed.
    `raw`: the payload as its JSON text, not decoded."""
    # The ids are chosen first (in id order straight from the pending index, for one kind)
    # and only they are read whole, joined in that order: no sort ever carries payloads.
    statement = sql.SQL(
        """SELECT o.id, o.idempotency_key, o.kind, o.tenant_id, o.recipient, {payload}
             FROM (SELECT id FROM ops.notification_outbox
                    WHERE status = 'pending' AND {kind}
                      AND next_attempt_at <= now() AND id > %s
                    ORDER BY id LIMIT %s) due
             JOIN ops.notification_outbox o ON o.id = due.id
            ORDER BY due.id"""
    ).format(
        payload=sql.SQL("o.payload::text" if raw else "o.payload"),
        kind=sql.SQL("kind = %s" if len(kinds) == 1 else "kind = ANY(%s)"),
    )
    with db.connection() as conn:
        rows = conn.execute(
            statement, [kinds[0] if len(kinds) == 1 else kinds, after, limit]
        ).fetchall()
    return [_Row(*row) for row in rows]


def _reject_invalid(
    db: PortalDatabase, rows: list[_Row], run_id: str, report: DeliveryReport
) -> list[_Row]:
    """Fail rows whose address SendGrid would refuse, before any request; the rest."""
    problems = [(row, address_problem(row.recipient)) for row in rows]
    bad = [(row.id, f"invalid address: {why}") for row, why in problems if why]
    if bad:
        _fail(db, bad, run_id, only_pending=True)
        report.invalid += len(bad)
        for row, why in problems:
            if why:
                report.errors.append(f"{row.key}: invalid address: {why}")
                log_event(
                    "email.invalid_address",
                    level=40,
                    kind=row.kind,
                    key=row.key,
                    tenantId=row.tenant_id,
                    recipient=mask_email(row.recipient or ""),
                    error=why,
                    runId=run_id,
                )
    return [row for row, why in problems if not why]


def _claim(
    db: PortalDatabase,
    ids: list[int],
    run_id: str,
    sent: Sequence[tuple[list[int], str]] = (),
) -> set[int]:
    """Mark these pending rows 'sending' for the request about to be made, durably
    committed before it; returns the ids this deliverer got (another may have taken some).
    `sent` (ids, message id) are earlier requests SendGrid accepted, marked 'sent' in the
    same commit: one disk flush per request rather than two."""
    with _durable(db) as conn:
        _set_sent(conn, sent)
        rows = conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'sending', claimed_by = %s, claimed_at = now(),
                      attempts = attempts + 1
                WHERE id = ANY(%s) AND status = 'pending'
            RETURNING id""",
            [run_id, ids],
        ).fetchall()
    return {row[0] for row in rows}


def _set_sent(conn: psycopg.Connection, accepted: Sequence[tuple[list[int], str]]) -> None:
    """Mark the rows of accepted requests (ids, SendGrid's message id) 'sent', in one
    statement whatever the number of requests."""
    if not accepted:
        return
    pairs = [(row_id, message_id) for ids, message_id in accepted for row_id in ids]
    conn.execute(
        """UPDATE ops.notification_outbox o
              SET status = 'sent', sent_at = now(), last_error = NULL,
                  provider_message_id = nullif(a.message_id, '')
             FROM unnest(%s::bigint[], %s::text[]) AS a(id, message_id)
            WHERE o.id = a.id""",
        [[i for i, _ in pairs], [m for _, m in pairs]],
    )


def _flush_sent(db: PortalDatabase, accepted: list[tuple[list[int], str]]) -> None:
    """Mark accepted requests 'sent' in a durable commit of their own, and forget them."""
    if accepted:
        with _durable(db) as conn:
            _set_sent(conn, accepted)
        accepted.clear()


def _release(db: PortalDatabase, ids: list[int], error: str) -> None:
    """Back to pending: SendGrid never took these (refused whole, busy, unreachable)."""
    with _durable(db) as conn:
        conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'pending', claimed_by = NULL, last_error = %s
                WHERE id = ANY(%s) AND status = 'sending'""",
            [_storable(error), ids],
        )


def _storable(error: str) -> str:
    """An error text PostgreSQL can store: a provider's or a library's message may hold a
    NUL (text columns refuse it, and the row would stay 'sending'), and may be long."""
    return error.replace("\x00", "?")[:2000]


def _fail(
    db: PortalDatabase,
    failures: Sequence[tuple[int, str]],
    run_id: str,
    release: Sequence[int] = (),
    only_pending: bool = False,
) -> None:
    """Fail each row with its own reason (one statement), and put `release` back to pending
    in the same transaction."""
    with _durable(db) as conn:
        conn.execute(
            """UPDATE ops.notification_outbox o
                  SET status = 'failed', last_error = f.error, failed_at = now(),
                      failed_run_id = %(run_id)s, outcome_unknown = false
                 FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS f(id, error)
                WHERE o.id = f.id
                  AND o.status = ANY(%(from)s)""",
            {
                "run_id": run_id,
                "ids": [i for i, _ in failures],
                "errors": [_storable(e) for _, e in failures],
                "from": ["pending"] if only_pending else ["pending", "sending"],
            },
        )
        if release:
            conn.execute(
                """UPDATE ops.notification_outbox SET status = 'pending', claimed_by = NULL
                    WHERE id = ANY(%s) AND status = 'sending'""",
                [list(release)],
            )


def _fail_unknown(
    db: PortalDatabase, rows: Sequence[_Row], what: str, run_id: str, report: DeliveryReport
) -> None:
    """The request was written and its answer lost: SendGrid may have sent it. Failed with
    the key named, never resent automatically."""
    with _durable(db) as conn:
        conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'failed', outcome_unknown = true, failed_at = now(),
                      failed_run_id = %s,
                      last_error = 'delivery outcome unknown: ' || %s || '. '
                                   || replace(%s, '{key}', idempotency_key)
                WHERE id = ANY(%s) AND status = 'sending'""",
            [run_id, _storable(what), UNKNOWN_HINT, [r.id for r in rows]],
        )
    report.unknown += len(rows)
    report.unknown_keys += [r.key for r in rows]
    report.errors.append(f"{len(rows)} outcome unknown: {what}")
    log_event(
        "email.outcome_unknown",
        level=40,
        kind=rows[0].kind,
        count=len(rows),
        keys=[r.key for r in rows[:KEYS_SHOWN]],
        error=what,
        runId=run_id,
    )


# -- operator tools ------------------------------------------------------------------


def resend(
    conn: psycopg.Connection,
    kind: str,
    since: datetime,
    actor: str,
    include_unknown: bool = False,
) -> list[str]:
    """Put `kind`'s rows that failed since `since` back to pending, audited; returns their
    keys. The key stays the same, so a row that was sent can never be requeued (only
    failed rows are), and each requeued row goes once. A row for a portal user takes the
    user's address as it is now (the operator fixed it). Rows whose outcome is unknown
    stay failed unless `include_unknown` (after checking SendGrid's activity log)."""
    users = conn.execute("SELECT to_regclass('portal.users') IS NOT NULL").fetchone()
    fresh_address = sql.SQL(
        "(SELECT u.email FROM portal.users u WHERE u.id = o.user_id)"
        if users and users[0]
        else "NULL"
    )
    statement = sql.SQL("""
        WITH picked AS (
            SELECT id FROM ops.notification_outbox
             WHERE status = 'failed' AND kind = %(kind)s
               AND coalesce(failed_at, created_at) >= %(since)s
               AND (%(unknown)s OR NOT outcome_unknown)
             ORDER BY id
               FOR UPDATE
        ), requeued AS (
            UPDATE ops.notification_outbox o
               SET status = 'pending', next_attempt_at = now(), claimed_by = NULL,
                   recipient = coalesce({fresh}, o.recipient),
                   last_error = 'requeued by ' || %(actor)s || ' after: '
                                || coalesce(o.last_error, ''),
                   outcome_unknown = false, failed_at = NULL, failed_run_id = NULL
              FROM picked WHERE o.id = picked.id
          RETURNING o.idempotency_key
        ), audit AS (
            INSERT INTO ops.audit_log (actor, action, details)
            SELECT %(actor)s, 'outbox_resend',
                   jsonb_build_object('kind', %(kind)s, 'since', %(since)s::timestamptz,
                                      'include_unknown', %(unknown)s,
                                      'count', (SELECT count(*) FROM requeued),
                                      'keys', (SELECT coalesce(jsonb_agg(idempotency_key
                                                  ORDER BY idempotency_key), '[]'::jsonb)
                                                 FROM requeued))
        )
        SELECT idempotency_key FROM requeued ORDER BY idempotency_key""").format(
        fresh=fresh_address
    )
    rows = conn.execute(
        statement,
        {"kind": kind, "since": since, "actor": actor, "unknown": include_unknown},
    ).fetchall()
    return [r[0] for r in rows]


def list_failed(
    conn: psycopg.Connection, unknown_only: bool, kind: str | None, limit: int
) -> list[dict[str, Any]]:
    """Failed rows, newest first: key, kind, when, by which run, why (no addresses)."""
    cursor = conn.execute(
        """SELECT id, idempotency_key, kind, outcome_unknown, failed_at, failed_run_id,
                  claimed_by, attempts, last_error
             FROM ops.notification_outbox
            WHERE status = 'failed' AND (NOT %(unknown)s OR outcome_unknown)
              AND (%(kind)s::text IS NULL OR kind = %(kind)s)
            ORDER BY coalesce(failed_at, created_at) DESC, id DESC
            LIMIT %(limit)s""",
        {"unknown": unknown_only, "kind": kind, "limit": limit},
    )
    names = [c.name for c in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
