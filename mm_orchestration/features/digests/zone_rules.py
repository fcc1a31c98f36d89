"""Our zone rules, written for SQL: the digest reads a task's local time from
`ops.zone_spans` (the pinned tz database's offsets, `zones.offsets`), never from
PostgreSQL's own zone files, so a digest says the same whichever server runs it.

Each zone's spans are written once per rules version, a year ahead, and again when less
than a week is left; where PostgreSQL's rules differ from ours, the run says how.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from mm_orchestration.features.digests.moments import LONGEST_LOOK_BACK
from mm_orchestration.platform import zones

# Our zone rules are written for SQL a year ahead, and again when less than a week is left.
SPAN_RANGE = timedelta(days=400)
SPAN_MARGIN = timedelta(days=7)


def span_columns(spans: Sequence[tuple[str, zones.Span]]) -> tuple[list[Any], ...]:
    """`zones.offsets`' spans as four arrays (zone, starts, ends, offset), as SQL unnests
    them."""
    return (
        [zone for zone, _ in spans],
        [span.starts for _, span in spans],
        [span.ends for _, span in spans],
        [span.offset for _, span in spans],
    )


def write_zone_rules(conn: psycopg.Connection, names: Sequence[str], now: datetime) -> str | None:
    """Make sure ops.zone_spans holds our rules (zones.offsets) for `names`, through the
    next year, for SQL to read local times by; returns how PostgreSQL's own rules differ
    from ours around `now` for those zones (None: they agree), naming both versions. Each
    zone's spans are written once per rules version (and again a year on)."""
    rules = zones.rules_version()
    wanted = sorted(set(names))
    covered = {
        row[0]
        for row in conn.execute(
            "SELECT zone FROM ops.zone_rules WHERE rules = %s AND zone = ANY(%s)"
            " AND valid_until > %s",
            [rules, wanted, now + SPAN_MARGIN],
        )
    }
    missing = [zone for zone in wanted if zone not in covered]
    if missing:
        until = now + SPAN_RANGE
        spans = zones.offsets(missing, until)
        conn.execute(
            "DELETE FROM ops.zone_spans WHERE rules = %s AND zone = ANY(%s)", [rules, missing]
        )
        conn.execute(
            """INSERT INTO ops.zone_spans (rules, zone, starts, ends, utc_offset)
               SELECT %s, z.* FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[],
                                          %s::int[]) z""",
            [rules, *span_columns(spans)],
        )
        conn.execute(
            """INSERT INTO ops.zone_rules (rules, zone, valid_until)
               SELECT %s, z, %s FROM unnest(%s::text[]) z
               ON CONFLICT (rules, zone) DO UPDATE SET valid_until = excluded.valid_until""",
            [rules, until, missing],
        )
    found = zones.disagreements(conn, wanted, now - LONGEST_LOOK_BACK, now + LONGEST_LOOK_BACK)
    return zones.describe(conn, found) if found else None
