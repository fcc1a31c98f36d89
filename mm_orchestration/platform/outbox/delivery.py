"""One delivery call's state, and what every kind of SendGrid answer does to the rows of
the request it answered; single emails (`singles`) and template batches (`templated`)
share it."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.outbox import rows
from mm_orchestration.platform.outbox.report import DeliveryReport
from mm_orchestration.platform.outbox.rows import FinishedRuns, Row
from mm_orchestration.platform.outbox.screening import Screened, Suppressions, record
from mm_orchestration.platform.outbox.sendgrid_client import SendError

# After this many lost answers in a row SendGrid is not answering: stop, keep the rest
# pending, rather than spend a read timeout and an unknown outcome on every request.
MAX_UNKNOWN_IN_A_ROW = 2
STREAK_BEFORE_PROBING = 3


class Delivery:
    """Settles what earlier deliverers left, screens rows, claims them request by request,
    and records what SendGrid said. Accepted requests are marked 'sent' in the next
    claim's commit (or by `flush`): a crash in between leaves at most that one request's
    rows 'sending', reported later as outcome unknown, never sent twice."""

    def __init__(
        self,
        db: PortalDatabase,
        kinds: Sequence[str],
        run_id: str,
        finished: FinishedRuns | None,
        must_reach: bool = False,
    ) -> None:
        self.db, self.run_id = db, run_id
        self.must_reach = must_reach
        self.report: DeliveryReport = rows.settle_abandoned(db, list(kinds), run_id, finished)
        self.suppressions = Suppressions.load(db)
        self.accepted: list[tuple[list[int], str]] = []
        self._claiming: ThreadPoolExecutor | None = None
        self._upcoming: tuple[list[int], Future[rows.OpenClaim]] | None = None
        self.unknown_in_a_row = 0
        self.streak: list[Row] = []  # refused alone, naming nothing, since the last acceptance
        self.probing = False

    def record(self, screened: Screened) -> list[Row]:
        """Act on a page's verdicts (screening.record); the rows that may be sent."""
        if screened.invalid or screened.suppressed:
            self._settled()
        return record(self.db, screened, self.run_id, self.report, self.must_reach)

    def _settled(self) -> None:
        """No claim open and every acceptance marked, before a write of another kind: a
        crash in it strands nothing, and it never waits for a connection the open claim
        holds (a pool may have only one)."""
        self.abandon_prepared()
        self.flush()

    def claim(self, ids: list[int]) -> set[int]:
        """Claim rows for the request about to be made (see rows.claim); counts it. The
        claim `prepare` began for these very ids is committed now; any other is abandoned."""
        upcoming = self._upcoming
        if upcoming is not None and upcoming[0] == ids:
            # Until it is in hand, the begun claim stays where `close` rolls it back: a stop
            # raised while waiting for it must not leave its transaction open.
            open_claim = upcoming[1].result()
            self._upcoming = None
            claimed = open_claim.commit(self.accepted)
        else:
            self.abandon_prepared()
            claimed = rows.claim(self.db, ids, self.run_id, self.accepted)
        self.accepted.clear()
        if claimed:
            self.report.requests += 1
        return claimed

    def prepare(self, ids: list[int]) -> None:
        """Begin the claim of the next request's rows on a thread, while this request is in
        flight (rows.begin_claim): its commit waits for `claim(ids)`, just before its own
        request, so a crash or a stop in between leaves those rows pending."""
        _abandon(self._upcoming)
        if self._claiming is None:
            self._claiming = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-claim")
        self._upcoming = (
            list(ids),
            self._claiming.submit(rows.begin_claim, self.db, ids, self.run_id),
        )

    def abandon_prepared(self) -> None:
        """Roll back the claim `prepare` began (its request will not go next). Every other
        write of a delivery does this first: while a claim is open, its connection is held
        and its rows are locked."""
        upcoming, self._upcoming = self._upcoming, None
        _abandon(upcoming)

    def accepted_request(self, ids: list[int], message_id: str) -> None:
        self.accepted.append((ids, message_id))
        self.report.sent += len(ids)
        self.unknown_in_a_row = 0
        self.streak.clear()
        self.probing = False

    def flush(self) -> None:
        """Mark the accepted requests 'sent' now (durably), not with the next claim."""
        rows.flush_sent(self.db, self.accepted)

    def close(self) -> None:
        """The end of this delivery: a claim begun and never made is abandoned, and every
        accepted request is marked 'sent'."""
        try:
            self.abandon_prepared()
        finally:
            if self._claiming is not None:
                self._claiming.shutdown()
                self._claiming = None
            self.flush()

    def fail(
        self, failures: Sequence[tuple[Row, str]], back_to_pending: Sequence[int] = ()
    ) -> None:
        """These rows fail for good, each with its reason; `back_to_pending` go again."""
        self.abandon_prepared()
        rows.fail(self.db, [(r.id, e) for r, e in failures], self.run_id, back_to_pending)
        self.report.failed += len(failures)
        self.report.errors += [f"{r.key}: {e}" for r, e in failures]

    def release(self, group: list[Row], why: str) -> None:
        """Back to pending, to go in another request of this delivery."""
        self.abandon_prepared()
        rows.release(self.db, [r.id for r in group], why)

    def reopen(self, failed: list[Row]) -> None:
        """Rows this delivery failed that were not at fault after all: pending again."""
        self.abandon_prepared()
        rows.reopen(self.db, [r.id for r in failed], self.run_id)
        self.report.failed -= len(failed)
        self.report.held += len(failed)

    def fail_unbuilt(self, row: Row, exc: Exception) -> None:
        """The message could not be built from the row: a bug or bad data costs this row."""
        self._settled()
        reason = f"could not build the message: {type(exc).__name__}: {exc}"
        rows.fail(self.db, [(row.id, reason)], self.run_id)
        self.report.failed += 1
        self.report.errors.append(f"{row.key}: {exc}")
        log_event("email.failed", level=40, kind=row.kind, key=row.key, error=str(exc))

    def settle(self, group: list[Row], exc: SendError) -> bool | None:
        """What SendGrid's refusal means for every request, not just this one. Returns
        False when delivery must stop (what is left stays pending), True when it goes on
        after settling these rows, None when the refusal is these rows' own (the caller
        fails or isolates them)."""
        self.abandon_prepared()  # the request before it was not accepted
        report = self.report
        log_event(
            "email.refused" if not exc.transient else "email.deferred",
            level=40 if not exc.transient else 30,
            kind=group[0].kind,
            size=len(group),
            status=exc.status,
            error=str(exc),
            runId=self.run_id,
        )
        if exc.unknown:
            rows.fail_unknown(self.db, group, str(exc), self.run_id, report)
            self.unknown_in_a_row += 1
            if self.unknown_in_a_row >= MAX_UNKNOWN_IN_A_ROW:
                report.stopped = f"SendGrid lost {self.unknown_in_a_row} answers in a row"
                report.stopped_kind = "lost"
                return False
            return True
        if exc.transient:
            rows.release(self.db, [r.id for r in group], str(exc))
            report.deferred += len(group)
            report.errors.append(f"request of {len(group)}: {exc}")
            report.stopped, report.stopped_kind = str(exc), "busy"
            return False  # SendGrid is busy or down: the rest waits too
        if exc.refuses_every_request:
            self.hold(group, str(exc))
            return False
        return None

    def hold(self, group: list[Row], why: str) -> None:
        """SendGrid refuses every request alike (a revoked key, a refused sender, the
        request's own shape): these rows and the rest stay pending, to go once that is
        fixed, and the op fails for good so that someone fixes it."""
        rows.release(self.db, [r.id for r in group], why)
        self.report.held += len(group)
        self.report.errors.append(f"request of {len(group)}: {why}")
        self.report.stopped, self.report.stopped_kind = why, "refused"

    # -- refusals naming nothing: the row's, or the request's? ----------------------------
    #
    # SendGrid refusing a request of one row and naming nothing usually means that row.
    # After STREAK_BEFORE_PROBING such refusals with no acceptance between them, the next
    # request is a probe, sent whole: accepted, the streak was the rows' own; refused, it
    # is the request SendGrid refuses, so the streak's rows go back to pending with the
    # rest. Either way a request-level refusal costs a few requests, not one per row.

    def refused_alone(self, row: Row, why: str) -> None:
        """A request of `row` alone was refused, naming nothing: the row fails."""
        self.fail([(row, why)])
        self.streak.append(row)
        self.probing = len(self.streak) >= STREAK_BEFORE_PROBING

    def probe_refused(self, group: list[Row], why: str) -> None:
        """The probe was refused too: SendGrid refuses the request, not the rows."""
        streak = len(self.streak)
        self.reopen(self.streak)
        self.streak.clear()
        self.hold(
            group,
            f"{why} (SendGrid refused {streak + 1} requests in a row and accepted none "
            "between them: it refuses the request itself)",
        )


def _abandon(upcoming: tuple[list[int], Future[rows.OpenClaim]] | None) -> None:
    # A claim that failed to begin changed nothing: there is nothing to undo, and its
    # error is the next claim's to meet.
    if upcoming is not None and upcoming[1].exception() is None:
        upcoming[1].result().abandon()
