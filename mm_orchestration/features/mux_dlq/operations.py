"""Operator tools for the Mux dead-letter queue: list, show, requeue, discard.

The same functions serve `mm-jobs dlq ...` and the `dlq_requeue` / `dlq_discard`
Dagster jobs (operator_jobs.py), so an operator can act from a shell or from the job
console. Every change is written to `ops.audit_log` with the actor, in the same
transaction. Plain SQL: the shell's commands do not load Dagster for it.
"""

import json
from typing import Any

import psycopg
from psycopg.rows import dict_row

from mm_orchestration.platform import audit
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.text import NOT_SHOWN

# The portal's three statuses, and 'discarded': a dead letter closed for good by an
# operator (ops.dlq_discards), which nothing requeues in bulk.
STATUSES = ("pending", "replayed", "dead", "discarded")


def list_rows(conn: psycopg.Connection, status: str | None = None, limit: int = 100) -> list[Any]:
    if status is not None and status not in STATUSES:
        raise ValueError(f"--status must be one of {', '.join(STATUSES)}; {NOT_SHOWN}")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            query(__package__, "list_letters"),
            {"status": status, "limit": limit},
        ).fetchall()
    for row in rows:
        row["last_error"] = _shown(row["last_error"])
    return rows


def show_row(conn: psycopg.Connection, dlq_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        # The payload as text, never decoded here: a poison letter (1,500 levels deep, a
        # 5,001-digit number) must be as easy to look at as any other.
        row = cur.execute(
            """SELECT id, event_id, event_type, status, attempts, received_at, next_attempt_at,
                      replayed_at, escalated_at, last_error, payload::text AS payload,
                      raw_body, signature
                 FROM portal.mux_webhook_dlq WHERE id = %s""",
            [dlq_id],
        ).fetchone()
        if row is None:
            raise LookupError(f"no dead letter with id {dlq_id}")
        row["error_history"] = cur.execute(
            """SELECT attempt, error, run_id, failed_at FROM ops.dlq_attempts
                WHERE dlq_id = %s ORDER BY attempt, id""",
            [dlq_id],
        ).fetchall()
    row["payload"] = _readable(row["payload"])
    row["last_error"] = _shown(row["last_error"])
    for attempt in row["error_history"]:
        attempt["error"] = _shown(attempt["error"])
    return row


def _shown(error: str | None) -> str | None:
    """An error as people may read it: a replay's error may quote a connection string."""
    return audit.masked_text(error) if error is not None else None


def _readable(text: str | None) -> Any:
    """The payload as JSON when Python can hold it, else its text as stored."""
    try:
        return json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        return text


def requeue(
    conn: psycopg.Connection,
    ids: list[int],
    actor: str,
    all_dead: bool = False,
    run_id: str | None = None,
    os_user: str | None = None,
) -> list[int]:
    """Back to pending with attempts reset (and escalation re-armed). Returns the ids.

    `all_dead` takes every dead letter except the discarded ones; a discarded letter named
    by its id is requeued (its discard is withdrawn, and the audit entry says so).
    `os_user`: who really ran the command, when it is `mm-jobs dlq` (`actor` is typed).
    """
    with conn.transaction():
        rows = conn.execute(
            query(__package__, "requeue"),
            {"ids": ids, "all_dead": all_dead},
        ).fetchall()
        requeued = sorted(r[0] for r in rows)
        missing = sorted(set(ids) - set(requeued))
        if missing:
            raise LookupError(f"not requeued (unknown id, or already replayed): {missing}")
        audit.record(
            conn,
            actor,
            "dlq_requeue",
            "mux-webhook-retry",
            run_id,
            {
                "ids": requeued,
                "event_ids": sorted(r[1] for r in rows),
                "all_dead": all_dead,
                "undiscarded": sorted(r[0] for r in rows if r[2]),
                "source": "console" if run_id else "cli",
                **({"os_user": os_user} if os_user else {}),
            },
            target=",".join(map(str, requeued)),
            outcome="succeeded",
        )
    return requeued


def discard(
    conn: psycopg.Connection,
    dlq_id: int,
    reason: str,
    actor: str,
    run_id: str | None = None,
    os_user: str | None = None,
) -> None:
    """Close a dead letter for good; it stays in the table (and its payload in the audit).
    `os_user`: who really ran the command, when it is `mm-jobs dlq` (`actor` is typed)."""
    if not reason.strip():
        raise ValueError("--reason is required: say why the event is being discarded")
    # The reason is typed by a person and is shown (the listing) and audited: a secret
    # pasted into it is masked, and a NUL, which PostgreSQL's text refuses, escaped.
    reason = audit.storable_text(audit.truncated(audit.masked_text(reason)))
    actor = audit.storable_text(actor)
    with conn.transaction():
        already = conn.execute(
            "SELECT actor, reason FROM ops.dlq_discards WHERE dlq_id = %s", [dlq_id]
        ).fetchone()
        if already is not None:
            raise LookupError(
                f"dead letter {dlq_id} was already discarded by {already[0]}: {already[1]}"
            )
        row = conn.execute(
            query(__package__, "discard"),
            [actor, reason, dlq_id],
        ).fetchone()
        if row is None:
            raise LookupError(f"no pending or dead letter with id {dlq_id}")
        conn.execute(
            "INSERT INTO ops.dlq_discards (dlq_id, actor, reason) VALUES (%s, %s, %s)",
            [dlq_id, actor, reason],
        )
        # Through the one path every entry takes (masked and capped): the payload is read
        # as text, and a poison Python cannot decode (any depth, any number) stays text,
        # cut with a marker, with the event's type beside it.
        audit.record(
            conn,
            actor,
            "dlq_discard",
            "mux-webhook-retry",
            run_id,
            {
                "id": row[0],
                "event_id": row[1],
                "event_type": row[2],
                "reason": reason,
                "payload": _readable(row[3]),
                "source": "console" if run_id else "cli",
                **({"os_user": os_user} if os_user else {}),
            },
            target=str(row[0]),
            outcome="succeeded",
        )
