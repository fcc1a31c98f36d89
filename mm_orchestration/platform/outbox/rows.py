"""The outbox row's states and every statement that moves a row between them.

    pending --claim--> sending --set_sent--> sent
       ^                  |---fail--------> failed (SendGrid refused it)
       |                  |---fail_unknown-> failed, outcome_unknown (answer lost)
       +----release-------+  (SendGrid never took it: busy, down, refused every request)
    pending --fail(only_pending)--> failed (invalid address, message not built)
    pending --suppress--> suppressed
    pending --> expired (past its use: a digest held longer than its grace; the digest
                         expires its own, `digests.settle.expire_stale`)

Each change is one set-based statement in a durable commit (`durable`): the `sending` mark
must be on disk before the request it guards, or a database crash would make the row look
pending again and send it twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.outbox.report import DeliveryReport
from mm_orchestration.platform.sql_files import query

# A 'sending' row older than this was left by a deliverer that died, even when Dagster
# cannot say so (a run it does not know): no request waits this long (timeouts).
SENDING_LEASE = "15 minutes"
KEYS_SHOWN = 100

UNKNOWN_HINT = (
    "Search SendGrid Email Activity for custom arg idempotency_key={key} before resending "
    "(mm-jobs outbox resend --include-unknown)."
)

FinishedRuns = Callable[[Sequence[str]], set[str]]
"""Of these run ids, the runs known to have finished (their deliverer is gone)."""


class Row(NamedTuple):
    """One pending email as delivery reads it (a tuple: 100,000 are built per digest)."""

    id: int
    key: str
    kind: str
    tenant_id: Any
    recipient: str
    payload: Any  # a dict, or the JSON text as stored (`page(raw=True)`)


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


@contextmanager
def durable(db: PortalDatabase) -> Iterator[psycopg.Connection]:
    """A transaction whose commit is on disk before it returns, whatever the server's or
    role's default (`synchronous_commit = on`)."""
    with db.connection() as conn:
        conn.execute("SET LOCAL synchronous_commit = on")
        yield conn


def settle_abandoned(
    db: PortalDatabase, kinds: list[str], run_id: str, finished: FinishedRuns | None
) -> DeliveryReport:
    """Settle what earlier deliverers left 'sending': a row whose deliverer's run has
    finished (Dagster says so), whose claim is older than the lease, or that this very run
    claimed (an earlier attempt of this op, stopped mid-request: a delivery starts with
    nothing of its own in flight) may have been sent, so it fails with its outcome unknown
    (never resent automatically) and the op that finds it fails. Rows another running
    deliverer holds are counted. Returns a new report with both counts."""
    report = DeliveryReport()
    with durable(db) as conn:
        holders = [
            r[0]
            for r in conn.execute(
                """SELECT DISTINCT claimed_by FROM ops.notification_outbox
                    WHERE status = 'sending' AND kind = ANY(%s)
                      AND claimed_by IS DISTINCT FROM %s""",
                [kinds, run_id],
            ).fetchall()
            if r[0]
        ]
        gone = [run_id, *sorted(finished(holders) if finished and holders else [])]
        report.abandoned = conn.execute(
            query(__package__, "abandon_sending"),
            {"run_id": run_id, "hint": UNKNOWN_HINT, "kinds": kinds,
             "lease": SENDING_LEASE, "gone": gone},
        ).rowcount  # fmt: skip
        held = conn.execute(
            """SELECT count(*) FROM ops.notification_outbox
                WHERE status = 'sending' AND kind = ANY(%s)
                  AND claimed_by IS DISTINCT FROM %s""",
            [kinds, run_id],
        ).fetchone()
        report.in_flight_elsewhere = int(held[0]) if held else 0
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


def page(
    db: PortalDatabase, kinds: list[str], after: int, limit: int, raw: bool = False
) -> list[Row]:
    """Up to `limit` due pending rows with ids above `after`, in id order; not claimed.
    `raw`: the payload as its JSON text, not decoded."""
    # The ids are chosen first (in id order straight from the pending index, for one kind)
    # and only they are read whole, joined in that order: no sort ever carries payloads.
    statement = sql.SQL(query(__package__, "page")).format(
        payload=sql.SQL("o.payload::text" if raw else "o.payload"),
        kind=sql.SQL("kind = %s" if len(kinds) == 1 else "kind = ANY(%s)"),
    )
    with db.connection() as conn:
        rows = conn.execute(
            statement, [kinds[0] if len(kinds) == 1 else kinds, after, limit]
        ).fetchall()
    return [Row._make(row) for row in rows]


def claim(
    db: PortalDatabase,
    ids: list[int],
    run_id: str,
    sent: Sequence[tuple[list[int], str]] = (),
) -> set[int]:
    """Mark these pending rows 'sending' for the request about to be made, durably
    committed before it; returns the ids this deliverer got (another may have taken some).
    `sent` (ids, message id) are earlier requests SendGrid accepted, marked 'sent' in the
    same commit: one disk flush per request rather than two."""
    return begin_claim(db, ids, run_id).commit(sent)


class OpenClaim:
    """A claim whose rows are marked 'sending' in a transaction not yet committed: nobody
    else can take them, and nothing is decided until `commit` (the claim holds, durably)
    or `abandon` (the rows stay pending, as if never touched; a crash does the same)."""

    def __init__(self, transaction: ExitStack, conn: psycopg.Connection, ids: set[int]) -> None:
        self._transaction, self._conn, self.ids = transaction, conn, ids

    def commit(self, sent: Sequence[tuple[list[int], str]] = ()) -> set[int]:
        """Commit the claim (on disk when this returns), with `sent` marked in the same
        commit (see `claim`); the ids it got."""
        try:
            set_sent(self._conn, sent)
        except BaseException:
            self._transaction.__exit__(*sys.exc_info())
            raise
        self._transaction.close()
        return self.ids

    def abandon(self) -> None:
        try:
            self._conn.rollback()
        finally:
            self._transaction.close()


def begin_claim(db: PortalDatabase, ids: list[int], run_id: str) -> OpenClaim:
    """`claim`'s statement, run now and committed by the caller (OpenClaim): the costly
    part of a claim can be done while the request before it is in flight, and the commit
    still comes just before its own request."""
    transaction = ExitStack()
    conn = transaction.enter_context(durable(db))
    try:
        rows = conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'sending', claimed_by = %s, claimed_at = now(),
                      attempts = attempts + 1
                WHERE id = ANY(%s::text::bigint[]) AND status = 'pending'
            RETURNING id""",
            [run_id, id_array(ids)],
        ).fetchall()
    except BaseException:
        transaction.__exit__(*sys.exc_info())  # rolled back, the connection back in the pool
        raise
    return OpenClaim(transaction, conn, {row[0] for row in rows})


def set_sent(conn: psycopg.Connection, accepted: Sequence[tuple[list[int], str]]) -> None:
    """Mark the rows of accepted requests (ids, SendGrid's message id) 'sent', in one
    statement whatever the number of requests."""
    if not accepted:
        return
    conn.execute(
        query(__package__, "set_sent"),
        [[id_array(ids) for ids, _ in accepted], [m for _, m in accepted]],
    )


def flush_sent(db: PortalDatabase, accepted: list[tuple[list[int], str]]) -> None:
    """Mark accepted requests 'sent' in a durable commit of their own, and forget them."""
    if accepted:
        with durable(db) as conn:
            set_sent(conn, accepted)
        accepted.clear()


def id_array(ids: Sequence[int]) -> str:
    """Row ids as a PostgreSQL array literal: a claim carries 1,000 of them, and psycopg's
    element-by-element array dumping was a tenth of a 100,000-person delivery's time."""
    return "{" + ",".join(map(str, ids)) + "}"


def release(db: PortalDatabase, ids: list[int], error: str) -> None:
    """Back to pending: SendGrid never took these (refused whole, busy, unreachable)."""
    with durable(db) as conn:
        conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'pending', claimed_by = NULL, last_error = %s
                WHERE id = ANY(%s) AND status = 'sending'""",
            [storable(error), ids],
        )


def reopen(db: PortalDatabase, ids: list[int], run_id: str) -> None:
    """Pending again: rows this run failed that turned out not to be at fault."""
    with durable(db) as conn:
        conn.execute(
            """UPDATE ops.notification_outbox
                  SET status = 'pending', claimed_by = NULL, failed_at = NULL,
                      failed_run_id = NULL
                WHERE id = ANY(%s) AND status = 'failed' AND failed_run_id = %s""",
            [ids, run_id],
        )


def storable(error: str) -> str:
    """An error text PostgreSQL can store: a provider's or a library's message may hold a
    NUL (text columns refuse it, and the row would stay 'sending'), and may be long."""
    return error.replace("\x00", "?")[:2000]


def fail(
    db: PortalDatabase,
    failures: Sequence[tuple[int, str]],
    run_id: str,
    back_to_pending: Sequence[int] = (),
    only_pending: bool = False,
) -> set[int]:
    """Fail each row with its own reason (one statement), and put `back_to_pending` back to
    pending in the same transaction. Returns the ids failed (a row another deliverer has
    settled meanwhile is left as it is)."""
    with durable(db) as conn:
        failed = conn.execute(
            query(__package__, "fail"),
            {
                "run_id": run_id,
                "ids": [i for i, _ in failures],
                "errors": [storable(e) for _, e in failures],
                "from": ["pending"] if only_pending else ["pending", "sending"],
            },
        ).fetchall()
        if back_to_pending:
            conn.execute(
                """UPDATE ops.notification_outbox SET status = 'pending', claimed_by = NULL
                    WHERE id = ANY(%s) AND status = 'sending'""",
                [list(back_to_pending)],
            )
    return {row[0] for row in failed}


def suppress(db: PortalDatabase, reasons: Sequence[tuple[int, str]]) -> set[int]:
    """Mark pending rows 'suppressed', each with the suppression's reason; the ids marked."""
    with durable(db) as conn:
        marked = conn.execute(
            query(__package__, "suppress"),
            [[i for i, _ in reasons], [storable(r) for _, r in reasons]],
        ).fetchall()
    return {row[0] for row in marked}


def fail_unknown(
    db: PortalDatabase, rows: Sequence[Row], what: str, run_id: str, report: DeliveryReport
) -> None:
    """The request was written and its answer lost: SendGrid may have sent it. Failed with
    the key named, never resent automatically."""
    with durable(db) as conn:
        conn.execute(
            query(__package__, "fail_unknown"),
            [run_id, storable(what), UNKNOWN_HINT, [r.id for r in rows]],
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
