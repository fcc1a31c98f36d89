"""Alert episodes (`ops.alert_episodes`): something unhealthy is said once when it starts
and once when it is over, never once per tick or per run.

A rule (the error rate, the schedule ticks, freshness) looks at the world and reports
each subject as unhealthy (`problem`) or healthy (`healthy`). The first problem opens an
episode, atomically (two sensors opening the same one open it once); later problems keep
it open. Health closes it once it has lasted `settle` (a subject flapping between the two
stays in one episode). Opening and closing each owe one alert, keyed by the episode
(`alert-episode:<id>:opened` / `:closed`): a sensor asks `unsent` which are still owed
(not yet in the outbox) and requests a `send_alert` run for each, so a tick that died
between deciding and asking is made good by the next, and the outbox key makes a second
request harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Kind = Literal["error_rate", "ticks", "freshness"]
Event = Literal["opened", "closed"]

# An alert still owed after this long is not sent at all: a sensor that was off for days
# does not wake up to report yesterday's news as today's.
OWED_FOR = timedelta(days=1)

CURRENT = """
SELECT id, kind, subject, job_name, contact, opened_at, good_since, closed_at, details, folded
  FROM ops.alert_episodes
 WHERE kind = %(kind)s AND subject = %(subject)s AND closed_at IS NULL
"""

OPEN = """
INSERT INTO ops.alert_episodes (kind, subject, job_name, contact, opened_at, details)
VALUES (%(kind)s, %(subject)s, %(job)s, %(contact)s, %(now)s, %(details)s)
ON CONFLICT (kind, subject) WHERE closed_at IS NULL DO NOTHING
RETURNING id, kind, subject, job_name, contact, opened_at, good_since, closed_at, details, folded
"""

STILL_UNHEALTHY = """
UPDATE ops.alert_episodes SET good_since = NULL
 WHERE kind = %(kind)s AND subject = %(subject)s AND closed_at IS NULL
   AND good_since IS NOT NULL
"""

# Healthy now: remember since when; close once that is `settle` ago, with what is true now.
HEALTHY = """
UPDATE ops.alert_episodes
   SET good_since = coalesce(good_since, %(now)s),
       closed_at = CASE WHEN coalesce(good_since, %(now)s) <= %(by)s THEN %(now)s END,
       details = CASE WHEN coalesce(good_since, %(now)s) <= %(by)s
                      THEN details || jsonb_build_object('closed', %(details)s::jsonb)
                      ELSE details END
 WHERE kind = %(kind)s AND subject = %(subject)s AND closed_at IS NULL
RETURNING id, kind, subject, job_name, contact, opened_at, good_since, closed_at, details, folded
"""

FOLD = """
UPDATE ops.alert_episodes
   SET folded = CASE WHEN %(run)s = ANY(folded) THEN folded ELSE array_append(folded, %(run)s) END
 WHERE kind = %(kind)s AND subject = %(subject)s AND closed_at IS NULL
RETURNING id, kind, subject, job_name, contact, opened_at, good_since, closed_at, details, folded
"""

OPEN_EPISODES = """
SELECT id, kind, subject, job_name, contact, opened_at, good_since, closed_at, details, folded
  FROM ops.alert_episodes
 WHERE closed_at IS NULL
 ORDER BY opened_at
"""


@dataclass(frozen=True)
class Episode:
    id: int
    kind: str
    subject: str
    job_name: str | None
    contact: str
    opened_at: datetime
    good_since: datetime | None
    closed_at: datetime | None
    details: dict[str, Any]
    folded: list[str]

    def key(self, event: Event) -> str:
        """The outbox key (and run key) of this episode's opening or closing alert."""
        return f"alert-episode:{self.id}:{event}"

    @property
    def opening(self) -> dict[str, Any]:
        """What was true when it opened."""
        return {k: v for k, v in self.details.items() if k != "closed"}

    @property
    def closing(self) -> dict[str, Any]:
        """What was true when it closed."""
        return dict(self.details.get("closed") or {})


def _episode(row: dict[str, Any] | None) -> Episode | None:
    return Episode(**row) if row else None


def current(conn: psycopg.Connection, kind: Kind, subject: str) -> Episode | None:
    """The open episode of `subject`, if any."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(CURRENT, {"kind": kind, "subject": subject}).fetchone()
    return _episode(row)


def problem(
    conn: psycopg.Connection,
    kind: Kind,
    subject: str,
    now: datetime,
    contact: str,
    job_name: str | None,
    details: dict[str, Any],
) -> Episode | None:
    """`subject` is unhealthy at `now`: open its episode (returned) unless one is open
    already, in which case it only stops counting as healthy (None is returned)."""
    with conn.cursor(row_factory=dict_row) as cur:
        opened = cur.execute(
            OPEN,
            {
                "kind": kind,
                "subject": subject,
                "job": job_name,
                "contact": contact,
                "now": now,
                "details": Jsonb(details),
            },
        ).fetchone()
        if opened is None:
            cur.execute(STILL_UNHEALTHY, {"kind": kind, "subject": subject})
    return _episode(opened)


def healthy(
    conn: psycopg.Connection,
    kind: Kind,
    subject: str,
    now: datetime,
    settle: timedelta,
    details: dict[str, Any],
) -> Episode | None:
    """`subject` is healthy at `now`: an open episode that has been healthy for `settle`
    closes (returned, with `details` as what was true then); otherwise None."""
    with conn.cursor(row_factory=dict_row) as cur:
        closed = cur.execute(
            HEALTHY,
            {
                "now": now,
                "by": now - settle,
                "details": Jsonb(details),
                "kind": kind,
                "subject": subject,
            },
        ).fetchone()
    return _episode(closed) if closed and closed["closed_at"] is not None else None


def fold(conn: psycopg.Connection, kind: Kind, subject: str, run_id: str) -> Episode | None:
    """Count the failed run `run_id` into `subject`'s open episode (once); the episode, or
    None when none is open."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(FOLD, {"run": run_id, "kind": kind, "subject": subject}).fetchone()
    return _episode(row)


UNSENT = """
SELECT e.id, e.kind, e.subject, e.job_name, e.contact, e.opened_at, e.good_since,
       e.closed_at, e.details, e.folded, owed.event
  FROM ops.alert_episodes e
 CROSS JOIN LATERAL (VALUES ('opened', e.opened_at), ('closed', e.closed_at)) owed(event, at)
 WHERE e.kind = %(kind)s
   AND owed.at IS NOT NULL AND owed.at > %(since)s
   AND NOT EXISTS (SELECT 1 FROM ops.notification_outbox o
                    WHERE o.idempotency_key = 'alert-episode:' || e.id || ':' || owed.event)
 ORDER BY e.id, owed.at
"""


def unsent(conn: psycopg.Connection, kind: Kind, now: datetime) -> list[tuple[Episode, Event]]:
    """The openings and closings of `kind` whose alert is not in the outbox yet, oldest
    first (an episode's opening before its closing)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(UNSENT, {"kind": kind, "since": now - OWED_FOR}).fetchall()
    owed: list[tuple[Episode, Event]] = []
    for row in rows:
        event = row.pop("event")
        owed.append((Episode(**row), event))
    return owed


def open_episodes(conn: psycopg.Connection) -> list[Episode]:
    """Every open episode, oldest first (the dashboard's)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(OPEN_EPISODES).fetchall()
    return [Episode(**row) for row in rows]
