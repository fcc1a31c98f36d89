"""mux-webhook-retry: every 5 minutes, replay the Mux events the portal failed to process.

The portal's webhook handler parks a Mux event it could not process in
`portal.mux_webhook_dlq`; this job is the only thing that gets those videos
unstuck. It claims due rows (`pending`, `next_attempt_at` passed or unset) with
`FOR UPDATE SKIP LOCKED` in bounded batches, so two runs never take the same row.
Envelopes are validated first; the common case (a status event for a video found by
its Mux asset id) is applied for the whole batch in one statement that updates each
video together with its own dead-letter row, and everything else (upload links, a
second event for the same video, a statement that fails) goes one event at a time,
each in its own savepoint. Either way an event and its row change together or not at
all, and one bad event never rolls back its neighbours. Stale events (older than the
video's `status_changed_at`) and unknown types are acknowledged with nothing changed.

A failure (an invalid envelope, a video that does not exist yet, a database error)
is a failed attempt: `attempts` goes up, `last_error` says what was wrong and
`next_attempt_at` backs off exponentially with jitter. The fifth failed attempt
makes the row 'dead' and escalates it once to the reliability partner (outbox email
and audit entry). A row whose stored Mux-Signature does not match its stored body
is dead at once and never applied.
"""

import json
import random
from dataclasses import dataclass, field
from typing import Any

import psycopg
from dagster import OpExecutionContext, job, op

from mm_orchestration import audit, inventory
from mm_orchestration.joblog import log_event
from mm_orchestration.ledger import WindowConfig, claim, report_skip, window_for
from mm_orchestration.mux_events import (
    STATUS_BY_TYPE,
    UPLOAD_LINKED,
    BadSignature,
    Envelope,
    EventError,
    apply_event,
    parse_envelope,
)
from mm_orchestration.mux_events import verify_signature as check_signature
from mm_orchestration.outbox import DeliveryIncomplete, deliver_pending, enqueue
from mm_orchestration.resources import JobSettings, Mailer, PortalDatabase
from mm_orchestration.resources.mailer import Email
from mm_orchestration.resources.mux import MuxWebhooks
from mm_orchestration.scheduling import executor_for, job_tags, retry_policy

SPEC = inventory.get("mux-webhook-retry")
DEAD_EMAIL_KIND = "mux_dlq_dead"

CLAIM_DUE = """
SELECT id, event_id, event_type, payload, attempts, raw_body, signature
  FROM portal.mux_webhook_dlq
 WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
 ORDER BY id
 LIMIT %s
 FOR UPDATE SKIP LOCKED
"""


@dataclass
class ReplayReport:
    replayed: int = 0
    stale: int = 0
    ignored: int = 0
    failed: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, int]:
        return {
            "events_applied": self.replayed,
            "events_stale": self.stale,
            "events_ignored": self.ignored,
            "attempts_failed": self.failed,
            "events_dead": self.dead,
        }


def backoff_seconds(attempts: int, base: float) -> float:
    """Delay after the `attempts`-th failure: base * 2^(n-1), jittered by +/-25%.

    The jitter band keeps the delays strictly growing while spreading retries apart."""
    return base * 2 ** (attempts - 1) * random.uniform(0.75, 1.25)


def replay_due(
    conn: psycopg.Connection, mux: MuxWebhooks, run_id: str, reliability_email: str
) -> ReplayReport:
    """Replay every due dead letter, batch by batch; each batch is one transaction."""
    replay = _Replay(conn, mux, run_id, reliability_email)
    while True:
        with conn.transaction():
            rows = conn.execute(CLAIM_DUE, [mux.batch_size]).fetchall()
            replay.batch(rows)
        if len(rows) < mux.batch_size:
            return replay.report


# The common case in one statement: status events for videos found by their Mux asset id,
# each event applied together with its own dead-letter row (same statement, same
# transaction). Events whose video is not found by asset id are left for the per-event path.
APPLY_BATCH = """
WITH ev AS (
    SELECT * FROM unnest(%(dlq_ids)s::bigint[], %(asset_ids)s::text[], %(statuses)s::text[],
                         %(created)s::timestamptz[], %(durations)s::numeric[],
                         %(playbacks)s::text[])
             AS e(dlq_id, asset_id, status, created_at, duration, playback_id)
), applied AS (
    UPDATE portal.media_assets m
       SET status = e.status, status_changed_at = e.created_at, updated_at = now(),
           duration_seconds = coalesce(e.duration, m.duration_seconds),
           mux_playback_id = coalesce(e.playback_id, m.mux_playback_id)
      FROM ev e
     WHERE m.mux_asset_id = e.asset_id
       AND (m.status_changed_at IS NULL OR m.status_changed_at <= e.created_at)
    RETURNING e.dlq_id
), matched AS (
    SELECT e.dlq_id FROM ev e JOIN portal.media_assets m ON m.mux_asset_id = e.asset_id
)
UPDATE portal.mux_webhook_dlq d
   SET status = 'replayed', replayed_at = now(), next_attempt_at = NULL,
       last_error = CASE WHEN a.dlq_id IS NULL
                         THEN 'acknowledged: stale, nothing changed' END
  FROM matched mt LEFT JOIN applied a ON a.dlq_id = mt.dlq_id
 WHERE d.id = mt.dlq_id
RETURNING d.id, d.event_id, a.dlq_id IS NOT NULL
"""


def _apply_simple(conn: psycopg.Connection, simple: dict[int, Any]) -> list[Any] | None:
    events = [envelope for _, envelope in simple.values()]
    ready = [e.type == "video.asset.ready" for e in events]
    try:
        with conn.transaction():
            return conn.execute(
                APPLY_BATCH,
                {
                    "dlq_ids": list(simple),
                    "asset_ids": [e.asset_id for e in events],
                    "statuses": [STATUS_BY_TYPE[e.type] for e in events],
                    "created": [e.created_at for e in events],
                    "durations": [
                        e.duration if r else None for e, r in zip(events, ready, strict=True)
                    ],
                    "playbacks": [
                        e.playback_id if r else None for e, r in zip(events, ready, strict=True)
                    ],
                },
            ).fetchall()
    except psycopg.Error as exc:
        log_event("mux.batch_fallback", level=30, jobName=SPEC.name, error=str(exc))
        return None


@dataclass
class _Replay:
    """One run's replay: where it writes, under which run, whom it escalates to."""

    conn: psycopg.Connection
    mux: MuxWebhooks
    run_id: str
    reliability_email: str
    report: ReplayReport = field(default_factory=ReplayReport)

    def batch(self, rows: list[tuple[Any, ...]]) -> None:
        """Validate in Python, apply the simple events set-based, the rest one by one."""
        simple: dict[int, Any] = {}
        ignored: list[int] = []
        one_by_one: list[tuple[Any, ...]] = []
        seen_assets: set[str] = set()
        for row in rows:
            try:
                envelope = self._validate(row)
            except EventError as exc:
                self._fail(row, str(exc), isinstance(exc, BadSignature))
                continue
            if envelope.type in STATUS_BY_TYPE and str(envelope.asset_id) not in seen_assets:
                seen_assets.add(str(envelope.asset_id))
                simple[row[0]] = (row, envelope)
            elif envelope.type not in STATUS_BY_TYPE and envelope.type != UPLOAD_LINKED:
                ignored.append(row[0])
            else:  # upload links, and a second event for a video already in this batch
                one_by_one.append(row)
        if ignored:
            self.conn.execute(
                """UPDATE portal.mux_webhook_dlq
                      SET status = 'replayed', replayed_at = now(), next_attempt_at = NULL,
                          last_error = 'acknowledged: ignored, nothing changed'
                    WHERE id = ANY(%s)""",
                [ignored],
            )
            self.report.ignored += len(ignored)
        if simple:
            # None: the set-based statement failed, so every event goes one by one.
            for dlq_id, _event_id, applied in _apply_simple(self.conn, simple) or []:
                if applied:
                    self.report.replayed += 1
                else:
                    self.report.stale += 1
                simple.pop(dlq_id)
            one_by_one += [row for row, _ in simple.values()]
        for row in sorted(one_by_one, key=lambda r: r[0]):
            self.one(row)

    def one(self, row: tuple[Any, ...]) -> None:
        """One event in its own savepoint: the event and its row's update, or neither."""
        dlq_id, event_id = row[0], row[1]
        try:
            with self.conn.transaction():
                applied = apply_event(self.conn, self._validate(row))
                self.conn.execute(
                    """UPDATE portal.mux_webhook_dlq
                          SET status = 'replayed', replayed_at = now(), next_attempt_at = NULL,
                              last_error = CASE WHEN %s = 'applied' THEN NULL ELSE %s END
                        WHERE id = %s""",
                    [applied.outcome, f"acknowledged: {applied.outcome}, nothing changed", dlq_id],
                )
        except (EventError, psycopg.Error) as exc:
            error = str(exc) if isinstance(exc, EventError) else f"database error: {exc}"
            self._fail(row, error, isinstance(exc, BadSignature))
            return
        counter = {"applied": "replayed", "stale": "stale"}.get(applied.outcome, "ignored")
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        log_event(
            "mux.replayed",
            jobName=SPEC.name,
            runId=self.run_id,
            eventId=event_id,
            outcome=applied.outcome,
            mediaAssetId=applied.media_asset_id,
        )

    def _validate(self, row: tuple[Any, ...]) -> Envelope:
        _, _, _, payload, _, raw_body, signature = row
        if self.mux.signing_secret and raw_body is not None and signature is not None:
            check_signature(self.mux.signing_secret, raw_body, signature)
        return parse_envelope(payload)

    def _fail(self, row: tuple[Any, ...], error: str, bad_signature: bool) -> None:
        """A failed attempt: count it, back off, and at the limit make the row dead."""
        dlq_id, event_id, event_type, _, attempts, _, _ = row
        attempts += 1
        dead = bad_signature or attempts >= self.mux.max_attempts
        delay = None if dead else backoff_seconds(attempts, self.mux.backoff_seconds)
        self.conn.execute(
            """UPDATE portal.mux_webhook_dlq
                  SET attempts = %(attempts)s, last_error = %(error)s,
                      status = CASE WHEN %(dead)s THEN 'dead' ELSE 'pending' END,
                      next_attempt_at = CASE WHEN %(dead)s THEN NULL
                                             ELSE now() + make_interval(secs => %(delay)s) END
                WHERE id = %(id)s""",
            {
                "attempts": attempts,
                "error": error[:2000],
                "dead": dead,
                "delay": delay,
                "id": dlq_id,
            },
        )
        self.conn.execute(
            """INSERT INTO ops.dlq_attempts (dlq_id, event_id, attempt, error, run_id)
               VALUES (%s, %s, %s, %s, %s)""",
            [dlq_id, event_id, attempts, error[:2000], self.run_id],
        )
        self.report.failed += 1
        self.report.errors.append(f"{event_id}: {error}")
        log_event(
            "mux.attempt_failed",
            level=30,
            jobName=SPEC.name,
            runId=self.run_id,
            eventId=event_id,
            attempts=attempts,
            dead=dead,
            error=error,
        )
        if dead:
            self.report.dead += 1
            self._escalate(
                {
                    "dlq_id": dlq_id,
                    "event_id": event_id,
                    "event_type": event_type,
                    "attempts": attempts,
                    "last_error": error,
                }
            )

    def _escalate(self, details: dict[str, Any]) -> None:
        """Once per row (escalated_at guards it): an email to act on and an audit entry."""
        marked = self.conn.execute(
            "UPDATE portal.mux_webhook_dlq SET escalated_at = now()"
            " WHERE id = %s AND escalated_at IS NULL",
            [details["dlq_id"]],
        ).rowcount
        if not marked:
            return
        enqueue(
            self.conn,
            f"mux-dlq-dead:{details['event_id']}",
            DEAD_EMAIL_KIND,
            self.reliability_email,
            details,
        )
        audit.record(self.conn, SPEC.name, "escalate_dead_letter", SPEC.name, self.run_id, details)
        log_event(
            "mux.escalated",
            level=40,
            jobName=SPEC.name,
            runId=self.run_id,
            eventId=details["event_id"],
            escalateTo=SPEC.escalate_to,
        )


def render_dead_letter_email(key: str, row: dict[str, Any]) -> Email:
    return Email(
        key=key,
        recipient=row["recipient"],
        subject=f"Mux event {row['event_id']} is dead after {row['attempts']} attempts",
        text=(
            f"The Mux event {row['event_id']} ({row.get('event_type') or 'unknown type'}) "
            f"could not be applied after {row['attempts']} attempts and will not be retried.\n\n"
            f"Last error: {row['last_error']}\n\n"
            "Inspect it with `mm-jobs dlq show {id}`; once the cause is fixed, "
            "`mm-jobs dlq requeue {id}` puts it back in the queue, or "
            "`mm-jobs dlq discard {id} --reason ...` closes it.\n".replace(
                "{id}", str(row["dlq_id"])
            )
            + f"\nDetails: {json.dumps(row, default=str)}\n"
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
    portal_db.require("portal.mux_webhook_dlq", "portal.media_assets", "ops.dlq_attempts")
    with claim(portal_db, window_for(context, SPEC.name), force=config.force) as run:
        if run.skipped:
            report_skip(context, run)
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
    report = deliver_pending(
        portal_db, mailer, [DEAD_EMAIL_KIND], render_dead_letter_email, context.run_id
    )
    context.add_output_metadata(report.as_metadata())
    if report.deferred:
        raise DeliveryIncomplete(f"{report.deferred} escalation email(s) stay pending")


@job(
    name=SPEC.dagster_name,
    description=__doc__,
    tags=job_tags(SPEC),
    executor_def=executor_for(SPEC),
)
def mux_webhook_retry() -> None:
    send_dead_letter_escalations(replay_dead_letters())
