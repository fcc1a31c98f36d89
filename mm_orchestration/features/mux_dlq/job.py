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
escalates it once to the reliability partner (outbox email and audit entry). With a
signing secret set, only what Mux provably sent is applied: a row whose stored
Mux-Signature does not match its stored body, that has no body or signature to check,
or whose payload is not the signed body is dead at once and never applied.
"""

import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from dagster import OpExecutionContext, op
from psycopg import sql

from mm_orchestration.features.mux_dlq.events import (
    ENVELOPE_FIELDS,
    STATUS_BY_TYPE,
    UPLOAD_LINKED,
    BadSignature,
    Envelope,
    EventError,
    apply_event,
    envelope_fields_sql,
    read_envelope,
    status_rank_sql,
)
from mm_orchestration.features.mux_dlq.events import verify_signature as check_signature
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import audit, inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.ledger import WindowConfig, ledgered
from mm_orchestration.platform.outbox import conclude, deliver_pending, enqueue, finished_runs
from mm_orchestration.platform.outbox.mailer import Email, Mailer
from mm_orchestration.platform.scheduling import inventory_job, retry_policy
from mm_orchestration.platform.text import one_line

SPEC = inventory.get("mux-webhook-retry")
# The tables the job needs; a missing one stops it before any work, named.
TABLES = ("portal.mux_webhook_dlq", "portal.media_assets", "ops.dlq_attempts")
DEAD_EMAIL_KIND = "mux_dlq_dead"

# The payload's fields come out of SQL as short texts (see mux_events): a 1,500-level
# document or a 5,001-digit number is read like any other. The body and signature are
# fetched only when a signing secret is set, and then the payload must be the signed body
# itself (compared as jsonb in SQL), since it is the payload's fields that are applied.
# A run walks the queue forward by id (`after`), so no batch scans the rows earlier
# batches settled, and a row fails at most once per run. `attempts` is read within
# 0..1,000,000 so a row holding a negative or the largest integer still gets its failed
# attempt written (as dead) instead of overflowing the update.
CLAIM_DUE = sql.SQL("""
SELECT id, event_id, left(event_type, 255), least(greatest(attempts, 0), 1000000),
       CASE WHEN %(verify)s THEN raw_body END, CASE WHEN %(verify)s THEN signature END,
       CASE WHEN %(verify)s THEN ops.jsonb_or_null(raw_body) IS NOT NULL END,
       CASE WHEN %(verify)s THEN ops.jsonb_or_null(raw_body) = payload END,
       now(),
       {fields}
  FROM portal.mux_webhook_dlq
 WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
   AND id > %(after)s
 ORDER BY id
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED
""").format(fields=envelope_fields_sql(sql.Identifier("payload")))


@dataclass(frozen=True)
class Letter:
    """One claimed dead letter: its columns and its envelope's fields (never the payload)."""

    id: int
    event_id: str
    event_type: str | None
    attempts: int
    raw_body: str | None
    signature: str | None
    body_is_json: bool | None  # None unless a signing secret is set
    payload_is_body: bool | None
    fields: dict[str, str | None]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> "Letter":
        dlq_id, event_id, event_type, attempts, body, signature, is_json, is_body = row[:CLAIM_NOW]
        fields = dict(zip(ENVELOPE_FIELDS, row[CLAIM_NOW + 1 :], strict=True))
        return cls(
            dlq_id, event_id, event_type, attempts, body, signature, is_json, is_body, fields
        )


CLAIM_NOW = 8  # the position of now() in CLAIM_DUE's select-list


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
    params = {"verify": bool(mux.signing_secret), "limit": mux.batch_size, "after": 0}
    while True:
        with conn.transaction():
            rows = conn.execute(CLAIM_DUE, params).fetchall()
            if rows:
                replay.batch([Letter.from_row(row) for row in rows], now=rows[0][CLAIM_NOW])
                params["after"] = rows[-1][0]
        if len(rows) < mux.batch_size:
            return replay.report


# The common case in one statement: status events for videos found by their Mux asset id,
# each event applied together with its own dead-letter row (same statement, same
# transaction). Events whose video is not found by asset id are left for the per-event path.
# An event as old as the video's last one applies only if it is not earlier in the lifecycle.
APPLY_BATCH = sql.SQL("""
WITH ev AS (
    SELECT * FROM unnest(%(dlq_ids)s::bigint[], %(asset_ids)s::text[], %(statuses)s::text[],
                         %(ranks)s::int[], %(created)s::timestamptz[], %(durations)s::numeric[],
                         %(playbacks)s::text[])
             AS e(dlq_id, asset_id, status, rank, created_at, duration, playback_id)
), applied AS (
    UPDATE portal.media_assets m
       SET status = e.status, status_changed_at = e.created_at, updated_at = now(),
           duration_seconds = coalesce(e.duration, m.duration_seconds),
           mux_playback_id = coalesce(e.playback_id, m.mux_playback_id)
      FROM ev e
     WHERE m.mux_asset_id = e.asset_id
       AND (m.status_changed_at IS NULL OR m.status_changed_at < e.created_at
            OR (m.status_changed_at = e.created_at AND e.rank >= {status_rank}))
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
""").format(status_rank=status_rank_sql(sql.Identifier("m", "status")))


def _apply_simple(
    conn: psycopg.Connection, simple: dict[int, tuple[Letter, Envelope]]
) -> list[Any] | None:
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
                    "ranks": [e.rank for e in events],
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

    def batch(self, letters: list[Letter], now: datetime) -> None:
        """Read each letter on its own, then apply the first status event of each video
        set-based and the rest one by one, in the order they were parked. Order between
        events is the staleness rule's: `created_at`, ties broken by lifecycle."""
        events = [(letter, e) for letter in letters if (e := self._read(letter, now))]
        simple: dict[int, tuple[Letter, Envelope]] = {}
        ignored: list[int] = []
        one_by_one: list[tuple[Letter, Envelope]] = []
        seen_assets: set[str] = set()
        for letter, envelope in events:
            if envelope.type in STATUS_BY_TYPE and str(envelope.asset_id) not in seen_assets:
                seen_assets.add(str(envelope.asset_id))
                simple[letter.id] = (letter, envelope)
            elif envelope.type not in STATUS_BY_TYPE and envelope.type != UPLOAD_LINKED:
                ignored.append(letter.id)
            else:  # upload links, and a later event for a video already in this batch
                one_by_one.append((letter, envelope))
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
            one_by_one += simple.values()
            one_by_one.sort(key=lambda event: event[0].id)
        for letter, envelope in one_by_one:
            self.one(letter, envelope)

    def one(self, letter: Letter, envelope: Envelope) -> None:
        """One event in its own savepoint: the event and its row's update, or neither."""
        try:
            with self.conn.transaction():
                applied = apply_event(self.conn, envelope)
                self.conn.execute(
                    """UPDATE portal.mux_webhook_dlq
                          SET status = 'replayed', replayed_at = now(), next_attempt_at = NULL,
                              last_error = CASE WHEN %s = 'applied' THEN NULL ELSE %s END
                        WHERE id = %s""",
                    [
                        applied.outcome,
                        f"acknowledged: {applied.outcome}, nothing changed",
                        letter.id,
                    ],
                )
        except (EventError, psycopg.Error) as exc:
            error = str(exc) if isinstance(exc, EventError) else f"database error: {exc}"
            self._fail(letter, error, isinstance(exc, BadSignature))
            return
        counter = {"applied": "replayed", "stale": "stale"}.get(applied.outcome, "ignored")
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        log_event(
            "mux.replayed",
            jobName=SPEC.name,
            runId=self.run_id,
            eventId=letter.event_id,
            outcome=applied.outcome,
            mediaAssetId=applied.media_asset_id,
        )

    def _read(self, letter: Letter, now: datetime) -> Envelope | None:
        """The letter's envelope, or None once its failed attempt is recorded."""
        try:
            if self.mux.signing_secret:
                verify(letter, self.mux.signing_secret)
            return read_envelope(letter.fields, now)
        except EventError as exc:
            self._fail(letter, str(exc), isinstance(exc, BadSignature))
        except Exception as exc:  # whatever a row holds, it fails alone, never the run
            self._fail(letter, f"unreadable dead letter: {type(exc).__name__}: {exc}", False)
        return None

    def _fail(self, letter: Letter, error: str, bad_signature: bool) -> None:
        """A failed attempt: count it, back off, and at the limit make the row dead."""
        attempts = letter.attempts + 1
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
                "id": letter.id,
            },
        )
        self.conn.execute(
            """INSERT INTO ops.dlq_attempts (dlq_id, event_id, attempt, error, run_id)
               VALUES (%s, %s, %s, %s, %s)""",
            [letter.id, letter.event_id, attempts, error[:2000], self.run_id],
        )
        self.report.failed += 1
        self.report.errors.append(f"{one_line(letter.event_id, 80)}: {error[:300]}")
        log_event(
            "mux.attempt_failed",
            level=30,
            jobName=SPEC.name,
            runId=self.run_id,
            eventId=letter.event_id,
            attempts=attempts,
            dead=dead,
            error=error[:2000],
        )
        if dead:
            self.report.dead += 1
            self._escalate(
                {
                    "dlq_id": letter.id,
                    "event_id": letter.event_id,
                    "event_type": letter.event_type,
                    "attempts": attempts,
                    "last_error": error[:2000],
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
            _escalation_key(details["event_id"]),
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


def _escalation_key(event_id: str) -> str:
    """The outbox key of a dead letter's escalation; a long id (the portal's unique index
    allows about 2,700 bytes) is hashed so the key always fits the outbox's index."""
    if len(event_id) <= 200:
        return f"mux-dlq-dead:{event_id}"
    return f"mux-dlq-dead:sha256:{hashlib.sha256(event_id.encode()).hexdigest()}"


def verify(letter: Letter, secret: str) -> None:
    """With a signing secret set, apply only what Mux provably sent: the stored
    Mux-Signature must match the stored body, and the payload must be that body.

    Raises BadSignature (the letter is dead at once) when the row has no body or no
    signature (a request that came without one is exactly what signing rules out), when
    the signature does not match, or when the payload differs from the signed body."""
    if letter.raw_body is None or letter.signature is None:
        missing = " and ".join(
            name
            for name, v in (("raw_body", letter.raw_body), ("signature", letter.signature))
            if v is None
        )
        raise BadSignature(
            f"unverifiable: no stored {missing}; with MUX_WEBHOOK_SECRET set only events "
            "whose Mux-Signature matches their body are applied"
        )
    check_signature(secret, letter.raw_body, letter.signature)
    if not letter.body_is_json:
        raise BadSignature("signed raw_body is not a JSON document, so nothing can be applied")
    if not letter.payload_is_body:
        raise BadSignature(
            "payload differs from the signed raw_body; only the signed body is applied"
        )


def render_dead_letter_email(key: str, row: dict[str, Any]) -> Email:
    return Email(
        key=key,
        recipient=row["recipient"],
        subject=(
            f"Mux event {one_line(row['event_id'], 80)} is dead after {row['attempts']} attempts"
        ),
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
