"""The audit trail as compliance reads it: who did what, when, to what, and how it ended.

One query over `ops.audit_log`, filtered by person, action and period, shared by the daily
`ops/audit_trail` asset (its summary in the console) and the console's CSV download
(`/audit-trail.csv?person=...&action=...&day=YYYY-MM-DD` or `&since=...&until=...`), with
the audit chain's head at the period's end (chain.py): the point an auditor later checks
the chain still passes through (`mm-jobs audit verify --expect-head HEAD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import psycopg

from mm_orchestration.features.audit_trail.chain import Head, head
from mm_orchestration.platform.spreadsheets import to_csv

if TYPE_CHECKING:  # pandas costs a light run 2 s; imported where a report is built
    import pandas as pd

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
# What a cut download or summary says, so nobody takes part of a period for all of it.
NARROW = (
    "only the first {rows} entries of this period are here (oldest first): ask for a "
    "shorter period (day=YYYY-MM-DD, or since=/until=) or one person or action "
    "(person=, action=), in parts that each hold fewer"
)

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


@dataclass(frozen=True)
class Entries:
    """The matching entries, oldest first, whether there were more than `limit`, and the
    audit chain's head at the period's end (None: no entry was ever linked by then)."""

    frame: pd.DataFrame
    truncated: bool
    head: Head | None = None

    @property
    def note(self) -> str | None:
        """What a reader must be told when this is not the whole period (None: it is)."""
        return NARROW.format(rows=f"{len(self.frame):,}") if self.truncated else None


def read(conn: psycopg.Connection, wanted: Filter, limit: int | None = None) -> Entries:
    """The matching entries, at most `limit` (MAX_ROWS) of them, saying whether there
    were more."""
    import pandas as pd

    limit = MAX_ROWS if limit is None else limit
    rows = conn.execute(
        QUERY,
        {
            "since": wanted.since,
            "until": wanted.until,
            "person": wanted.person,
            "action": wanted.action,
            "limit": limit + 1,  # one more tells that there are more
        },
    ).fetchall()
    return Entries(
        pd.DataFrame(rows[:limit], columns=COLUMNS), len(rows) > limit, head(conn, wanted.until)
    )


def entries(conn: psycopg.Connection, wanted: Filter) -> pd.DataFrame:
    """The matching entries, oldest first (at most MAX_ROWS: `read` says when cut)."""
    return read(conn, wanted).frame


def as_csv(frame: pd.DataFrame, note: str | None = None) -> bytes:
    """Spreadsheet-safe CSV (a person or a target that starts with = runs nothing); with a
    last row saying the download was cut, and how to narrow it, when `note` is given."""
    import pandas as pd

    out = frame.copy()
    if not out.empty:
        out["occurred_at"] = out["occurred_at"].map(lambda t: t.isoformat())
    if note is not None:
        marker = {column: "" for column in COLUMNS} | {"actor": "[truncated]", "details": note}
        out = pd.concat([out, pd.DataFrame([marker], columns=COLUMNS)], ignore_index=True)
    return to_csv(out)
