"""The audit trail as compliance reads it: who did what, when, to what, and how it ended.

One query over `ops.audit_log`, filtered by person, action and period, shared by the daily
`ops/audit_trail` asset (its summary in the console) and the console's CSV download
(`/audit-trail.csv?person=...&action=...&day=YYYY-MM-DD` or `&since=...&until=...`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg

from mm_orchestration.spreadsheets import to_csv

COLUMNS = [
    "occurred_at",
    "actor",
    "role",
    "action",
    "target",
    "outcome",
    "job_name",
    "run_id",
    "details",
    "id",
]
MAX_ROWS = 100_000  # one download; a longer period is asked for in parts

QUERY = """
SELECT occurred_at, actor, role, action, target, outcome, job_name, run_id,
       details::text AS details, id
  FROM ops.audit_log
 WHERE occurred_at >= %(since)s AND occurred_at < %(until)s
   AND (%(person)s::text IS NULL OR lower(actor) = lower(%(person)s))
   AND (%(action)s::text IS NULL OR action = %(action)s)
 ORDER BY occurred_at, id
 LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Filter:
    """A period [since, until) and optionally one person and one action."""

    since: datetime
    until: datetime
    person: str | None = None
    action: str | None = None

    @classmethod
    def for_day(
        cls, day: date, zone: str, person: str | None = None, action: str | None = None
    ) -> Filter:
        """One local calendar day in `zone`."""
        tz = ZoneInfo(zone)
        start = datetime.combine(day, time(0), tz)
        return cls(start, datetime.combine(day + timedelta(days=1), time(0), tz), person, action)


def entries(conn: psycopg.Connection, wanted: Filter) -> pd.DataFrame:
    """The matching entries, oldest first."""
    rows = conn.execute(
        QUERY,
        {
            "since": wanted.since,
            "until": wanted.until,
            "person": wanted.person,
            "action": wanted.action,
            "limit": MAX_ROWS,
        },
    ).fetchall()
    return pd.DataFrame(rows, columns=COLUMNS)


def as_csv(frame: pd.DataFrame) -> bytes:
    """Spreadsheet-safe CSV (a person or a target that starts with = runs nothing)."""
    out = frame.copy()
    if not out.empty:
        out["occurred_at"] = out["occurred_at"].map(lambda t: t.isoformat())
    return to_csv(out)
