"""What a finished run means, in one line an operator can act on.

Dagster calls a run a success when nothing raised, and sums up a failure as "Steps failed:
[...]". Operators need more: a run whose window was already done is *skipped* (the ledger
tags it `mm/outcome=skipped`), and a failure should lead with the op's own message
("discard_dead_letter: no pending or dead letter with id 55"), the trace after. The CLI,
the failure alert and the run list (tag `mm/error`) all use these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from mm_orchestration.platform.audit import masked_text
from mm_orchestration.platform.ledger import OUTCOME_TAG, SKIP_REASON_TAG

ERROR_TAG = "mm/error"
_TAG_LIMIT = 500
# Dagster wraps an op's exception in these; the op's own error is their cause.
_WRAPPERS = (
    "dagster._core.errors.DagsterExecutionStepExecutionError",
    "dagster._core.errors.DagsterUserCodeExecutionError",
    # A step that failed on every try under its retry policy: the last try's error is the
    # cause (psycopg's reason, not "Exceeded max_retries of 1").
    "Exceeded max_retries of ",
    "RetryRequested but retries are disabled",
)


@dataclass(frozen=True)
class Outcome:
    """`status` is succeeded, skipped, failed or canceled; `summary` says why in one line."""

    status: str
    summary: str = ""


def error_line(error: Any) -> str:
    """The first line of the innermost error an op raised (a SerializableErrorInfo), with
    any password in it masked: it is shown in the run list, alerts and the CLI, and a
    driver's message may quote a connection string."""
    return masked_text(_first_line(error))


def _first_line(error: Any) -> str:
    while error is not None and error.cause is not None and error.message.startswith(_WRAPPERS):
        error = error.cause
    if error is None:
        return ""
    message = error.message.strip()
    # "dagster._core.definitions.events.Failure: ..." -> the description alone.
    for prefix in (
        "dagster._core.definitions.events.Failure: ",
        "Failure: ",
        # The outbox's own Failures: their description is the whole story.
        "mm_orchestration.platform.outbox.outcome.DeliveryFailed: ",
        "mm_orchestration.platform.outbox.outcome.DeliveryIncomplete: ",
    ):
        message = message.removeprefix(prefix)
    if error.cls_name == "ValidationError":
        # pydantic says which config field and why on the lines after "1 validation error".
        lines = [x.strip() for x in message.splitlines() if not x.strip().startswith("For further")]
        return " ".join(lines[1:]) or message
    return message.splitlines()[0] if message else error.cls_name or ""


def failure_summary(instance: DagsterInstance, run_id: str) -> str:
    """'op: message' for each op that failed for good, else the run's own failure reason."""
    lines = []
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        if event is None:
            continue
        line = f"{event.step_key}: {error_line(event.step_failure_data.error)}"
        if line not in lines:
            lines.append(line)
    if lines:
        return "; ".join(lines)
    for record in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE):
        event = record.dagster_event
        data = event.event_specific_data if event is not None else None
        found = error_line(getattr(data, "error", None))
        return found or masked_text((record.message or "the run failed").strip())
    return "the run failed"


def outcome(instance: DagsterInstance, run_id: str) -> Outcome:
    """How a finished run ended, as an operator should read it."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return Outcome("failed", f"run {run_id} is not in this instance")
    if run.status == DagsterRunStatus.SUCCESS:
        if run.tags.get(OUTCOME_TAG) == "skipped":
            return Outcome("skipped", run.tags.get(SKIP_REASON_TAG, "its window was handled"))
        return Outcome("succeeded")
    if run.status in (DagsterRunStatus.CANCELED, DagsterRunStatus.CANCELING):
        return Outcome("canceled", "the run was canceled")
    return Outcome("failed", failure_summary(instance, run_id))


def tag_failure(instance: DagsterInstance, run_id: str, summary: str) -> None:
    """Show the one-line reason in the run list, as the run's `mm/error` tag."""
    text = summary if len(summary) <= _TAG_LIMIT else summary[: _TAG_LIMIT - 1] + "…"
    instance.add_run_tags(run_id, {ERROR_TAG: text})
