"""The operator's outbox tools (`mm-jobs outbox list` and `resend`): what did not go, and
sending it again once the data is fixed, audited, under the same idempotency keys."""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from mm_orchestration.platform import audit
from mm_orchestration.platform.inventory import KIND_SENDERS
from mm_orchestration.platform.outbox.rows import SENDING_LEASE
from mm_orchestration.platform.sql_files import query

__all__ = ["KIND_SENDERS", "list_failed", "resend"]


def resend(
    conn: psycopg.Connection,
    kind: str,
    since: datetime,
    actor: str,
    include_unknown: bool = False,
    to: str | None = None,
) -> list[str]:
    """Put `kind`'s rows that failed (or expired) since `since` back to pending, audited;
    returns their keys. The key stays the same, so a row that was sent can never be
    requeued (only failed and expired rows are), and each requeued row goes once; a
    requeued row is due from now (an expired digest is not expired again). A row for a
    portal user takes the user's address as it is now (the operator fixed it); `to` sends
    every requeued row to that address instead (mail for our own contacts, whose setting
    was fixed: the row keeps the address it was queued with). Rows whose outcome is
    unknown stay failed unless `include_unknown` (after checking SendGrid's activity log)."""
    users = conn.execute("SELECT to_regclass('portal.users') IS NOT NULL").fetchone()
    fresh_address = sql.SQL(
        "(SELECT u.email FROM portal.users u WHERE u.id = o.user_id)"
        if users and users[0]
        else "NULL"
    )
    statement = sql.SQL(query(__package__, "resend")).format(fresh=fresh_address)
    rows = conn.execute(
        statement,
        {"kind": kind, "since": since, "actor": actor, "unknown": include_unknown, "to": to},
    ).fetchall()
    keys = [r[0] for r in rows]
    # In the same transaction: the entry exists exactly when the requeue does.
    audit.record(
        conn,
        actor,
        "outbox_resend",
        None,
        None,
        {
            "kind": kind,
            "since": since.isoformat(),
            "include_unknown": include_unknown,
            "count": len(keys),
            "keys": keys,
            "to": to,
            "os_user": getpass.getuser(),
        },
        target=kind,
        outcome="succeeded",
    )
    return keys


def list_failed(
    conn: psycopg.Connection, unknown_only: bool, kind: str | None, limit: int
) -> list[dict[str, Any]]:
    """Rows that did not go, newest first: key, kind, state, when, by which run, why (no
    addresses). States: `failed`; `unknown` (failed, may have been sent); `sending` (a
    deliverer holds it now); `stale` (held longer than the lease: its deliverer died, and
    the next delivery of the kind reports it as unknown); `waiting` (pending after SendGrid
    could not take it, or refused every request: it goes once that is over); `expired`
    (waited past its use, never sent). `unknown_only` lists what an operator must look up
    in SendGrid: unknown, sending and stale."""
    cursor = conn.execute(
        query(__package__, "list_failed"),
        {"unknown": unknown_only, "kind": kind, "limit": limit, "lease": SENDING_LEASE},
    )
    names = [c.name for c in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
