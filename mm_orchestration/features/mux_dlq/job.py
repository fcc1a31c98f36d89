"""mux-webhook-retry: every 5 minutes, replay the Mux events the portal failed to process.

The portal's webhook handler parks a Mux event it could not process in
`portal.mux_webhook_dlq`; this job is the only thing that gets those videos
unstuck. It claims due rows (`pending`, `next_attempt_at` passed or unset) with
`FOR UPDATE SKIP LOCKED` in bounded batches, so two runs never take the same row.
A payload is never decoded in Python: the claim picks the envelope's few fields out
of the jsonb in SQL, so any document the column can hold (any depth, any number) is
read. Envelopes are validated first, values included (a time in the future or a
duration of years is a failed attempt, not applied), and a video follows its events in
order of `created_at`, ties broken by lifecycle (created, then ready or errored, then
deleted), whatever order they arrive in. The common case (a status event for a video
found by its Mux asset id) is applied for the whole batch in one statement that
updates each video together with its own dead-letter row, and everything else (upload
links, a later event for the same video, a statement that fails) goes one event at a
time, each in its own savepoint. Either way an event and its row change together or
not at all, and one bad event never rolls back its neighbours. Stale events (older
than the video's `status_changed_at`, or as old and earlier in the lifecycle) and
unknown types are acknowledged with nothing changed.

A failure (an invalid or implausible envelope, a video that does not exist yet, a
database error, a row that cannot be read at all) is a failed attempt of that row
alone: `attempts` goes up, `last_error` says what was wrong and `next_attempt_at`
backs off exponentially with jitter. The fifth failed attempt makes the row 'dead' and
escalates it once to the reliability partner: an audit entry per letter, and one email
per run listing the letters that died in it (the first 20, the count, and the command
that lists them all), so an outage that kills 500 events is one email. With a
signing secret set, only what Mux provably sent is applied: a row whose stored
Mux-Signature does not match its stored body, that has no body or signature to check,
or whose payload is not the signed body is dead at once and never applied.
"""

from typing import Any

from dagster import OpExecutionContext, op

from mm_orchestration.features.mux_dlq.replay import (
    DEAD_EMAIL_KIND,
    SPEC,
    release_escalations,
    replay_due,
)
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.ledger import WindowConfig, ledgered
from mm_orchestration.platform.outbox import conclude, deliver_pending, finished_runs
from mm_orchestration.platform.outbox.mailer import Email, Mailer
from mm_orchestration.platform.scheduling import inventory_job, retry_policy
from mm_orchestration.platform.text import one_line

# The tables the job needs; a missing one stops it before any work, named.
TABLES = ("portal.mux_webhook_dlq", "portal.media_assets", "ops.dlq_attempts")


def render_dead_letter_email(key: str, row: dict[str, Any]) -> Email:
    """One run's dead letters in one email: the first few listed, the rest counted. A row
    queued before emails were folded holds one letter's fields at the top level."""
    letters = row.get("letters")
    if letters is None:
        letters = [{k: row.get(k) for k in ("dlq_id", "event_id", "event_type", "attempts")}]
        letters[0]["last_error"] = row.get("last_error")
    count = int(row.get("count") or len(letters))
    if count == 1:
        only = letters[0]
        subject = (
            f"Mux event {one_line(str(only['event_id']), 80)} is dead"
            f" after {only['attempts']} attempts"
        )
        command = f"`mm-jobs dlq show {only['dlq_id']}`"
    else:
        run = str(row.get("run_id") or "?")[:8]
        subject = f"{count} Mux events are dead (mux-webhook-retry run {run})"
        command = "`mm-jobs dlq list --status dead`"
    lines = [
        f"  #{letter['dlq_id']}  {letter.get('event_type') or 'unknown type'}"
        f"  {one_line(str(letter['event_id']), 120)}  after {letter['attempts']} attempts:"
        f" {one_line(str(letter.get('last_error')), 300)}"
        for letter in letters
    ]
    if count > len(letters):
        lines.append(f"  ... and {count - len(letters)} more")
    return Email(
        key=key,
        recipient=row["recipient"],
        subject=subject,
        text=(
            f"{'This Mux event' if count == 1 else f'These {count} Mux events'} could not be"
            " applied and will not be retried:\n\n"
            + "\n".join(lines)
            + f"\n\nInspect them with {command} and `mm-jobs dlq show ID`; once the cause is"
            " fixed, `mm-jobs dlq requeue ID...` (or `--all-dead`) puts them back in the queue,"
            " or `mm-jobs dlq discard ID --reason ...` closes one.\n"
        ),
        categories=("mux-dlq",),
    )


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def replay_dead_letters(
    context: OpExecutionContext,
    config: WindowConfig,
    portal_db: PortalDatabase,
    mux: MuxWebhooks,
    job_settings: JobSettings,
) -> int:
    """Replay due Mux events from the dead-letter queue; escalate the ones that die."""
    with ledgered(context, portal_db, SPEC.name, TABLES, config.force) as run:
        if run.skipped:
            return 0
        with portal_db.connection() as conn:
            report = replay_due(conn, mux, context.run_id, job_settings.reliability_email)
        run.rows_affected = report.replayed + report.stale + report.ignored
        run.details = report.as_metadata()
    context.add_output_metadata(report.as_metadata())
    return report.dead


@op(retry_policy=retry_policy(SPEC), tags={"kind": "sendgrid"})
def send_dead_letter_escalations(
    context: OpExecutionContext, dead: int, portal_db: PortalDatabase, mailer: Mailer
) -> None:
    """Deliver the escalation emails of events that died (this run's and any earlier)."""
    with portal_db.connection() as conn:
        release_escalations(conn)
    report = deliver_pending(
        portal_db,
        mailer,
        [DEAD_EMAIL_KIND],
        render_dead_letter_email,
        context.run_id,
        finished_runs(context.instance),
        must_reach=True,
    )
    context.add_output_metadata(
        conclude(portal_db, report, [DEAD_EMAIL_KIND], context.run_id, "escalation email")
    )


@inventory_job(SPEC, __doc__)
def mux_webhook_retry() -> None:
    send_dead_letter_escalations(replay_dead_letters())
