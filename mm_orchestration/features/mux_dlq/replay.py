"""The replay engine of the Mux dead-letter queue: claimed letters are read, the common
case (a status event for a video found by its Mux asset id) applied for the whole batch in
one statement, and everything else one event at a time, each in its own savepoint.

An event and its dead-letter row change together or not at all, and one bad event never
rolls back its neighbours. A failed attempt backs off exponentially with jitter; the
fifth makes the row dead and escalates it once: an audit entry of its own, and a line in
its run's one escalation email (`fold_escalations`), so an outage that kills 500 events
together is one email, not 500.
"""

import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from mm_orchestration.features.mux_dlq.apply import apply_event
from mm_orchestration.features.mux_dlq.events import (
    STATUS_BY_TYPE,
    UPLOAD_LINKED,
    BadSignature,
    Envelope,
    EventError,
    read_envelope,
    status_rank_sql,
)
from mm_orchestration.features.mux_dlq.letters import CLAIM_DUE, CLAIM_NOW, Letter, verify
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import audit, inventory
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.text import one_line

SPEC = inventory.get("mux-webhook-retry")
DEAD_EMAIL_KIND = "mux_dlq_dead"
# Letters named in one escalation email; the rest are counted (`mm-jobs dlq list`).
LETTERS_LISTED = 20


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


APPLY_BATCH = sql.SQL(query(__package__, "apply_batch")).format(
    status_rank=status_rank_sql(sql.Identifier("m", "status"))
)


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
    escalating: list[dict[str, Any]] = field(default_factory=list)

    def batch(self, letters: list[Letter], now: datetime) -> None:
        """Read each letter on its own, then apply the first status event of each video
        set-based and the rest one by one, in the order they were parked. Order between
        events is the staleness rule's: `created_at`, ties broken by lifecycle."""
        self.escalating = []
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
        if self.escalating:  # in the batch's transaction: the email exists iff the deaths do
            fold_escalations(self.conn, self.run_id, self.reliability_email, self.escalating)
            self.escalating = []

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
            query(__package__, "fail_attempt"),
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
        """Once per row (escalated_at guards it): an audit entry now, and a line in the
        run's escalation email when the batch ends (`fold_escalations`)."""
        marked = self.conn.execute(
            "UPDATE portal.mux_webhook_dlq SET escalated_at = now()"
            " WHERE id = %s AND escalated_at IS NULL",
            [details["dlq_id"]],
        ).rowcount
        if not marked:
            return
        self.escalating.append(details)
        audit.record(self.conn, SPEC.name, "escalate_dead_letter", SPEC.name, self.run_id, details)
        log_event(
            "mux.escalated",
            level=40,
            jobName=SPEC.name,
            runId=self.run_id,
            eventId=details["event_id"],
            escalateTo=SPEC.escalate_to,
        )


# The run's escalation email is queued held (`next_attempt_at = 'infinity'`: no deliverer
# pages it) and each batch's dead letters are added to it while it is held; the job's
# delivery op releases it (`release_escalations`) and only then can anyone read it, so no
# letter is added to an email already read for sending. Once released, a later batch of
# the same run (a concurrent run released it) opens a held email of its own.
FOLD = query(__package__, "fold_escalation")


def fold_escalations(
    conn: psycopg.Connection, run_id: str, recipient: str, letters: list[dict[str, Any]]
) -> None:
    """Add these newly dead letters to the run's held escalation email, in the caller's
    transaction (the letters' deaths and their email commit together, or neither)."""
    listed = [
        {**letter, "event_id": letter["event_id"][:300], "last_error": letter["last_error"][:500]}
        for letter in letters[:LETTERS_LISTED]
    ]
    payload = Jsonb({"run_id": run_id, "count": len(letters), "letters": listed})
    params = {"kind": DEAD_EMAIL_KIND, "recipient": recipient, "payload": payload}
    params["listed"] = LETTERS_LISTED
    for key in (f"mux-dlq-dead:run:{run_id}", f"mux-dlq-dead:run:{run_id}:{letters[0]['dlq_id']}"):
        if conn.execute(FOLD, {**params, "key": key}).rowcount:
            return
    raise RuntimeError(f"escalation email of run {run_id} could not be queued")  # unreachable


def release_escalations(conn: psycopg.Connection) -> int:
    """Make every held escalation email due: this run's, and any a run that stopped before
    its delivery left held. Returns how many."""
    return conn.execute(
        """UPDATE ops.notification_outbox SET next_attempt_at = now()
            WHERE kind = %s AND status = 'pending' AND next_attempt_at = 'infinity'""",
        [DEAD_EMAIL_KIND],
    ).rowcount
