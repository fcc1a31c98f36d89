"""The digest schedule against an oracle, over the world's zones (issue 23): every zone of
the pinned tzdata, every frequency, local times on the quarter hour, years 2024-2032,
people who change zone, time and frequency at random moments, a run at every 15-minute
tick through the job's own database work (`digests.settle.settle`). For each person, every
period gets exactly one digest or one recorded miss, never two, at the instant the oracle
(tests/digest_oracle.py, `zoneinfo` alone) says. Bounded for `make test`;
`benchmarks/digest_property.py` runs the long version.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, time, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_orchestration.features.digests.settle import settle
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.zones import _zones_by_folded_name, transitions
from tests import digest_oracle as oracle
from tests import factories as f

ZONES = sorted(set(_zones_by_folded_name().values()))
# Bounded for `make test`; benchmarks/digest_property.py sets these for the long version.
EXAMPLES = int(os.environ.get("MM_DIGEST_PROPERTY_EXAMPLES", "10"))
DAYS = float(os.environ.get("MM_DIGEST_PROPERTY_DAYS", "2"))
RANDOM = os.environ.get("MM_DIGEST_PROPERTY_RANDOM") == "1"


@st.composite
def choices(draw) -> oracle.Choice:
    return oracle.Choice(
        draw(st.sampled_from(ZONES)),
        draw(st.sampled_from(["daily", "weekdays", "weekly"])),
        time(draw(st.integers(0, 23)), draw(st.sampled_from([0, 15, 30, 45]))),
        draw(st.integers(1, 7)),
    )


@st.composite
def lives(draw) -> tuple[datetime, datetime, list[list[tuple[datetime, oracle.Choice]]]]:
    """A stretch of DAYS days in 2024-2032 (often around one of the first person's zone's
    transitions) and one or two people, each with a choice and up to two changes."""
    first = draw(choices())
    year = draw(st.integers(2024, 2032))
    start = datetime(year, 1, 1, tzinfo=UTC) + timedelta(days=draw(st.integers(0, 360)))
    changes_of_rules = transitions(first.zone, datetime(year, 1, 1, tzinfo=UTC),
                                   datetime(year + 1, 1, 1, tzinfo=UTC))  # fmt: skip
    if changes_of_rules and draw(st.booleans()):
        start = draw(st.sampled_from(changes_of_rules)) - timedelta(hours=draw(st.integers(6, 30)))
    start = start.replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(days=DAYS)
    ticks = int((end - start) / oracle.TICK)
    people = []
    for n in range(draw(st.integers(1, 2))):
        timeline = [(start - timedelta(days=30), first if n == 0 else draw(choices()))]
        for at in sorted(draw(st.lists(st.integers(1, ticks - 1), max_size=2, unique=True))):
            timeline.append((start + at * oracle.TICK, draw(choices())))
        people.append(timeline)
    return start, end, people


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lives())
def test_every_period_gets_one_digest_or_one_miss_at_the_oracles_instant(database_url, life):
    start, end, people = life
    with connect(database_url) as conn:
        conn.execute("TRUNCATE ops.digest_periods, ops.digest_clock, ops.digest_groups,"
                     " ops.notification_outbox")  # fmt: skip
        conn.execute("DELETE FROM portal.users")
        tenant = f.tenant(conn)
        ids = []
        for timeline in people:
            c = timeline[0][1]
            ids.append(f.user(conn, tenant, timezone=c.zone, digest_frequency=c.frequency,
                              digest_time=c.at, digest_weekday=c.weekday,
                              created_at=start - oracle.TICK))  # fmt: skip
        conn.execute("INSERT INTO ops.digest_clock (id, evaluated_through) VALUES (1, %s)",
                     [start - oracle.TICK])  # fmt: skip
        conn.commit()
        tick = start
        while tick < end:
            for user, timeline in zip(ids, people, strict=True):
                change = [c for at, c in timeline if at == tick]
                if change:
                    c = change[0]
                    conn.execute(
                        "UPDATE portal.users SET timezone = %s, digest_frequency = %s,"
                        " digest_time = %s, digest_weekday = %s WHERE id = %s",
                        [c.zone, c.frequency, c.at, c.weekday, user],
                    )
            settle(conn, tick, f"t{tick:%Y%m%d%H%M}", oracle.GRACE, "Australia/Sydney")
            conn.commit()
            tick += oracle.TICK
        for user, timeline in zip(ids, people, strict=True):
            got = conn.execute(
                "SELECT moment, CASE WHEN outcome = 'missed' THEN 'missed' ELSE 'queued' END"
                " FROM ops.digest_periods WHERE user_id = %s ORDER BY moment",
                [user],
            ).fetchall()
            assert got == oracle.expected(timeline, start, end), (timeline, start)
