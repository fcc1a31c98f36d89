"""The op's outcome from its delivery: plain success only when every email went; a
failure the failure sensors alert on when any failed for good or was held back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import DagsterInstance, Failure, MetadataValue

from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.outbox.report import DeliveryReport
from mm_orchestration.platform.outbox.rows import KEYS_SHOWN, FinishedRuns
from mm_orchestration.platform.sql_files import query


class DeliveryIncomplete(Failure):
    """Some messages could not be delivered yet (SendGrid busy or down); they stay
    pending, and the op's retry (or the next run) sends them."""

    def __init__(self, description: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(description=description, metadata=metadata, allow_retries=True)


class DeliveryFailed(Failure):
    """Some messages failed for good in this run, or SendGrid refuses every request (the
    rest stays pending); everything else was sent. No retry fixes this (an operator fixes
    the data or the account, then `mm-jobs outbox resend`)."""

    def __init__(self, description: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(description=description, metadata=metadata, allow_retries=False)


def finished_runs(instance: DagsterInstance) -> FinishedRuns:
    """Which of these runs Dagster knows to have ended: their deliverers are gone, so the
    rows they left 'sending' are settled at once (a run Dagster does not know waits for
    the lease)."""

    def finished(run_ids: Sequence[str]) -> set[str]:
        gone = set()
        for run_id in run_ids:
            try:
                run = instance.get_run_by_id(run_id)
            except Exception:  # not a run id Dagster can read: the lease decides
                continue
            if run is not None and run.is_finished:
                gone.add(run_id)
        return gone

    return finished


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
            query(__package__, "run_failures"),
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
    when some failed for good in this run (invalid addresses, refusals, lost answers,
    deliverers that died mid-send) or SendGrid refuses every request (they stay pending).
    Either way everything that could go went first. `escalate(message)` is called before
    the op fails for good (the job names who acts). `tolerate_deferred`: an asset whose
    rerun delivers what waits (the residency report, the health summary) does not fail
    for it; the rows show as `waiting` in `mm-jobs outbox list` meanwhile."""
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
            more = failures.by_reason.get("outcome unknown", 0) - 5
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
        parts = []
        if report.stopped_kind == "refused":
            # Nothing of this is the rows' fault: they wait, untouched, for the fix.
            parts.append(
                f"SendGrid refuses every request ({report.stopped}): delivery stopped; "
                f"{report.held or 'the'} {what}(s) held and the rest stay pending, and go "
                "with the next run once the key, the sender or the template is fixed"
            )
        elif report.stopped_kind == "lost":
            # Retrying now would only strand more rows as unknown: the next run tries.
            parts.append(
                f"{report.stopped}: delivery stopped; the rest stays pending for the next "
                "run (no retry within this one)"
            )
        if failed_text:
            parts.append(failed_text)
        message = "; ".join(parts)
        if failures.total:
            message = f"{message.rstrip('.')}. {hint}"
        if escalate is not None:
            escalate(message)
        raise DeliveryFailed(message, metadata)
    return metadata
