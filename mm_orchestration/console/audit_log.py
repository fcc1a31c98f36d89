"""The console's audit entries (`ops.audit_log`), one per action, each written in its own
committed transaction before the action, and settled with how it ended: who (person,
role, how we know them), what, on what, and the outcome. A refusal is audited within its
person's budget (refusals.RefusalLimiter); if an entry cannot be written, nothing is done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from mm_orchestration.console.access import Identity
from mm_orchestration.console.refusals import RefusalLimiter
from mm_orchestration.platform import audit
from mm_orchestration.platform.db import connect

log = logging.getLogger("mm.console")


class AuditUnavailable(RuntimeError):
    """The audit entry could not be written, so the action is not performed."""

    status = 503


class RateLimited(AuditUnavailable):
    """Too many refusals of one person in a short time: refused without an entry each
    (the entry that reached the limit says so)."""

    status = 429


@dataclass
class ConsoleAudit:
    """Writes the console's audit entries to the portal database (DATABASE_URL); refusals
    within each person's budget (refusals.RefusalLimiter)."""

    database_url: str
    limiter: RefusalLimiter = field(default_factory=RefusalLimiter)

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        try:
            with connect(self.database_url, autocommit=True) as conn:
                yield conn
        except psycopg.Error as exc:
            # Logged by class only: a driver message may quote the connection string.
            log.error("audit entry not written: %s", type(exc).__name__)
            raise AuditUnavailable(
                "the audit log could not be written, so nothing was done; try again, and "
                "tell the reliability partner if it persists"
            ) from None

    def write(
        self,
        identity: Identity | None,
        action: str,
        outcome: str,
        target: str | None,
        details: dict[str, Any],
        job_name: str | None = None,
        run_id: str | None = None,
        peer: str | None = None,
    ) -> int:
        """One entry; a refusal past its person's budget raises RateLimited instead (and
        the refusal that spends the budget is followed by an entry saying so). `peer`:
        the address a request naming nobody came from (its budget's key)."""
        who = identity.person if identity else "anonymous"
        verdict = "audit"
        if outcome == "refused":
            key = who if identity else f"anonymous@{peer or 'unknown'}"
            verdict = self.limiter.note(key)
            if verdict == "suppress":
                raise RateLimited(
                    "too many refused requests in a short time: this one is refused without "
                    f"an audit entry of its own; wait {self.limiter.retry_after(key)} s"
                )
        source = {"source": identity.source if identity else None}
        if peer and not identity:
            source["peer"] = peer
        with self._conn() as conn:
            entry = audit.record(
                conn,
                who,
                action,
                job_name,
                run_id,
                {**details, **source},
                role=identity.role if identity else None,
                target=target,
                outcome=outcome,
            )
            if verdict == "audit_and_limit":
                audit.record(
                    conn,
                    who,
                    "rate_limited",
                    None,
                    None,
                    {
                        "limit": self.limiter.limit,
                        "window_seconds": self.limiter.window,
                        "note": "further refusals in this window are answered 429 without "
                        "an entry each",
                        **source,
                    },
                    role=identity.role if identity else None,
                    target=who,
                    outcome="refused",
                )
            return entry

    def refuse(
        self,
        identity: Identity | None,
        action: str,
        target: str | None,
        details: dict[str, Any],
        peer: str | None = None,
    ) -> AuditUnavailable | None:
        """Write a refusal's entry (`write`, outcome `refused`); the reason it was not
        written (past the person's budget, the log unavailable), which the caller answers
        with instead of its own refusal, else None."""
        try:
            self.write(identity, action, "refused", target, details, peer=peer)
        except AuditUnavailable as exc:
            return exc
        return None

    def settle(
        self, entry_id: int, outcome: str, run_id: str | None, result: dict[str, Any]
    ) -> None:
        try:
            with self._conn() as conn:
                audit.settle(conn, entry_id, outcome, run_id, result)
        except AuditUnavailable:
            pass  # the entry of the act exists; only its ending could not be added


def ended_by(exc: BaseException) -> tuple[str, str | None, dict[str, Any]]:
    """The outcome of an action whose resolver raised: `failed` for an error, and
    `canceled` when it was cancelled (the client went away, the server is stopping), with
    `interrupted` in the details, which leaves open whether Dagster did it; never
    `allowed` for ever."""
    if isinstance(exc, Exception):
        return "failed", None, {"error": type(exc).__name__}
    return "canceled", None, {"error": type(exc).__name__, "interrupted": True}
