"""What is checked of each email before any request: an address SendGrid would take, and
a recipient not on the portal's suppression list.

Both rules compare in Python, one page of rows at a time, because neither can be said in
SQL for every server: `lower()` under the C locale leaves `É` as it is, and no SQL
function knows that `bücher.example` is `xn--bcher-kva.example`.
"""

from __future__ import annotations

from typing import NamedTuple

from mm_orchestration.monitoring.joblog import log_event, mask_email
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.outbox.addresses import (
    address_problem,
    canonical_address,
    sendable_address,
)
from mm_orchestration.platform.outbox.report import DeliveryReport
from mm_orchestration.platform.outbox.rows import Row, fail, suppress


class Suppressions:
    """`portal.email_suppressions`, read once per delivery, keyed by canonical address."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons

    @classmethod
    def load(cls, db: PortalDatabase) -> Suppressions:
        with db.connection() as conn:
            rows = conn.execute(
                "SELECT email, reason FROM portal.email_suppressions WHERE email IS NOT NULL"
            ).fetchall()
        return cls({canonical_address(email): reason or "suppressed" for email, reason in rows})

    def reason(self, address: str) -> str | None:
        """Why `address` must never be emailed, or None."""
        return self.reasons.get(canonical_address(address)) if self.reasons else None


class Screened(NamedTuple):
    """One page's verdicts (`judge`): what may go, and what may not and why."""

    sendable: list[Row]  # in page order, each address as it is sent (`sendable_address`)
    invalid: list[tuple[Row, str]]  # an address SendGrid would refuse, and why
    suppressed: list[tuple[Row, str]]  # the recipient is suppressed, and the reason


def judge(rows: list[Row], suppressions: Suppressions) -> Screened:
    """Each row's verdict, touching nothing (so it may run on another thread, ahead of the
    requests): an address SendGrid would take, and a recipient not suppressed."""
    problems = [(row, address_problem(row.recipient)) for row in rows]
    invalid = [(row, why) for row, why in problems if why]
    valid = [row for row, why in problems if not why]
    suppressed = [(row, reason) for row in valid if (reason := suppressions.reason(row.recipient))]
    if suppressed:
        gone = {row.id for row, _ in suppressed}
        valid = [row for row in valid if row.id not in gone]
    sendable = [(row, sendable_address(row.recipient)) for row in valid]
    return Screened(
        [row if row.recipient == to else row._replace(recipient=to) for row, to in sendable],
        invalid,
        suppressed,
    )


def record(
    db: PortalDatabase,
    screened: Screened,
    run_id: str,
    report: DeliveryReport,
    must_reach: bool = False,
) -> list[Row]:
    """Act on a page's verdicts; returns the rows that may be sent. Rows with an address
    SendGrid would refuse fail with the reason, before any request; rows for a suppressed
    recipient become 'suppressed', or fail when `must_reach` (our own contacts: silencing
    them would silence the alerts)."""
    # Each counts only the rows it changed: a deliverer running beside this one may have
    # settled the same rows already, and its run reports them.
    if screened.invalid:
        reasons = [(row.id, f"invalid address: {why}") for row, why in screened.invalid]
        changed = fail(db, reasons, run_id, only_pending=True)
        invalid = [(row, why) for row, why in screened.invalid if row.id in changed]
        report.invalid += len(invalid)
        for row, why in invalid:
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
    suppressed = screened.suppressed
    if suppressed and must_reach:
        failed = [
            (row.id, f"the recipient, our own contact, is on portal.email_suppressions "
             f"({reason}): remove it there, or set another address")
            for row, reason in suppressed
        ]  # fmt: skip
        changed = fail(db, failed, run_id, only_pending=True)
        report.failed += len(changed)
        report.errors += [
            f"{row.key}: {why}"
            for (row, _), (_, why) in zip(suppressed, failed, strict=True)
            if row.id in changed
        ]
    elif suppressed:
        report.suppressed += len(suppress(db, [(row.id, reason) for row, reason in suppressed]))
    return screened.sendable
