"""What one person's digest would say now, for support and the portal team (`mm-jobs
digest preview`): the same statements the run settles with, read only, so a preview never
queues, sends or records anything about them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from mm_orchestration.features.digests.choices import read_choices
from mm_orchestration.features.digests.moments import (
    LONGEST_LOOK_BACK,
    current_period,
    horizon,
    period_length,
    scheduled_moment,
)
from mm_orchestration.features.digests.statements import PREVIEW
from mm_orchestration.features.digests.zone_rules import span_columns
from mm_orchestration.platform import zones


def preview(
    conn: psycopg.Connection, user: uuid.UUID, now: datetime, fallback_tz: str
) -> dict[str, Any] | None:
    """What `user` would receive at `now` (the template data), without sending or
    recording anything about them; None when they get no digest (opted out, deactivated,
    frequency 'off', their agency suspended). Keys: user_id, zone, frequency, period,
    moment (when this period's digest is due, UTC, or None), shift (ON_TIME, MOVED out of
    a gap, MERGED in an overlap), settled (this period's record: outcome and moment, or
    None), suppressed, data (what the template gets; empty lists mean nothing to
    report)."""
    choices = [c for c in read_choices(conn, fallback_tz, None, user) if c.choice is not None]
    if not choices:
        return None
    choice = choices[0].choice
    assert choice is not None
    zone, frequency = choice.zone, choice.frequency
    current = current_period(choice, now)
    scheduled = scheduled_moment(choice, now)
    span_zone, span_starts, span_ends, span_offset = span_columns(
        zones.offsets([zone], horizon(current.day, zone))
    )
    row = conn.execute(
        PREVIEW,
        {
            "tenant": None,
            "user": user,
            "now": now,
            "zone": zone,
            "period": current.period,
            "local_date": current.day,
            "horizon": horizon(current.day, zone),
            "period_length": period_length(frequency),
            "look_back": LONGEST_LOOK_BACK,
            "rules": zones.rules_version(),
            "span_zone": span_zone,
            "span_starts": span_starts,
            "span_ends": span_ends,
            "span_offset": span_offset,
        },
    ).fetchone()
    if row is None:
        return None
    record = conn.execute(
        """SELECT outcome, moment FROM ops.digest_periods
            WHERE user_id = %s AND moment >= %s AND moment < %s ORDER BY moment LIMIT 1""",
        [user, current.starts, current.ends],
    ).fetchone()
    return {
        "user_id": str(row[0]),
        "zone": zone,
        "frequency": frequency,
        "period": current.period,
        "moment": scheduled.due if scheduled else None,
        "shift": scheduled.shift if scheduled else None,
        "settled": {"outcome": record[0], "moment": record[1]} if record else None,
        "suppressed": row[1],
        "data": row[2],
    }
