"""When the next restore drill is due, so that one never lapses unnoticed.

SOC 2 and the seed ask for periodic, dated restore tests: a drill must succeed at least
every 35 days (the monthly `backup-verify` and a margin for a holiday or a retry). This is
the one rule, read by everything that judges it:

- each drill record says when the next is due (`ops.backup_drills.next_due_at`, written
  with the record by `RECORD_DRILL`): 35 days after it when it succeeded; when it failed,
  where the last success left it (at once when none ever did);
- the daily `restore_drill_due` check on `ops/backup_drills` warns compliance from a week
  before the due moment and fails once it has passed (its first run after, the day after);
- the weekly residency report's `restore_drill_within_35_days` passes while it has not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import psycopg

DRILL_EVERY = timedelta(days=35)
WARN_BEFORE = timedelta(days=7)

State = Literal["ok", "due_soon", "lapsed"]

# A drill's record with when the next is due, in one statement (the last success read in
# the same snapshot as the insert).
RECORD_DRILL = """
INSERT INTO ops.backup_drills
       (started_at, finished_at, status, method, checks, error, next_due_at)
VALUES (%(started)s, now(), %(status)s, %(method)s, %(checks)s, %(error)s,
        CASE WHEN %(status)s = 'succeeded' THEN now() + %(every)s
             ELSE coalesce((SELECT max(finished_at) FROM ops.backup_drills
                             WHERE status = 'succeeded') + %(every)s, now()) END)
RETURNING id, next_due_at
"""

_LAST_SUCCESS = """
SELECT max(finished_at) FROM ops.backup_drills
 WHERE status = 'succeeded' AND finished_at <= %s
"""


@dataclass(frozen=True)
class DrillDue:
    """The last successful drill before a moment, and when the next is due after it."""

    as_of: datetime
    last_success: datetime | None

    @property
    def due_at(self) -> datetime | None:
        """When a drill must next have succeeded by (None: none ever has: due now)."""
        return None if self.last_success is None else self.last_success + DRILL_EVERY

    @property
    def state(self) -> State:
        """`ok`; `due_soon` from a week before the due moment; `lapsed` once it passed."""
        due = self.due_at
        if due is None or self.as_of > due:
            return "lapsed"
        return "due_soon" if self.as_of >= due - WARN_BEFORE else "ok"

    def describe(self) -> str:
        """One sentence for compliance: when the last drill succeeded and what is due."""
        if self.last_success is None:
            return "no restore drill has ever succeeded: run backup-verify now"
        due = self.due_at
        assert due is not None
        last = f"the last restore drill succeeded on {self.last_success:%Y-%m-%d %H:%M} UTC"
        if self.state == "lapsed":
            return (
                f"{last}; the next was due on {due:%Y-%m-%d %H:%M} UTC and is "
                f"{_days(self.as_of - due)} late: run backup-verify; sign-off is blocked "
                "until one succeeds"
            )
        return (
            f"{last}; the next is due by {due:%Y-%m-%d %H:%M} UTC ({_days(due - self.as_of)} left)"
        )


def _days(span: timedelta) -> str:
    """`3 days`, `1 day`, or `less than a day` (never `0 days`)."""
    days = span.days
    if days < 1:
        return "less than a day"
    return f"{days} day" + ("s" if days > 1 else "")


def drill_due(conn: psycopg.Connection, as_of: datetime) -> DrillDue:
    """The rule applied to the drills recorded up to `as_of`."""
    row = conn.execute(_LAST_SUCCESS, [as_of]).fetchone()
    return DrillDue(as_of, row[0] if row else None)
