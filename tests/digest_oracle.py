"""An oracle for the digest schedule, built from `zoneinfo` (the pinned tzdata) alone: no
code of the job's. It says, for people whose choices change at given instants and a run
at every tick, which digest moments are settled and how (queued on time or late within
the grace, or missed). The property test
(tests/features/digests/test_digest_property.py) and its long version
(benchmarks/digest_property.py) compare the job's records with it.

The rule it states (docs/jobs.md, "How digests are timed"): a person's period is their
local day (or ISO week when weekly) in the zone they have when it is worked out, as a
span of instants; a period with a digest moment inside it is done, once. A run settles
every moment of the person's current choice since the last run (since a whole period
back when their choice changed, but only in a period still open at the last run), later
than their last settled moment and whose period holds none yet: the latest goes if it is
at most the grace old, every other is recorded as missed. A time in a gap goes at the
first instant after it; a time in an overlap at its first occurrence; a day that does
not exist has no digest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

TICK = timedelta(minutes=15)
MARGIN = timedelta(minutes=15)
GRACE = timedelta(hours=6)


@dataclass(frozen=True)
class Choice:
    zone: str
    frequency: str  # daily, weekdays, weekly
    at: time
    weekday: int


@functools.lru_cache(maxsize=100_000)
def first_at_or_after(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant whose wall clock in `zone` reads `wall` or later: scanned a
    minute at a time from a day before, then to the second."""
    t = (wall - timedelta(hours=27)).replace(tzinfo=UTC)
    t = t.replace(second=0, microsecond=0)
    while t.astimezone(zone).replace(tzinfo=None) < wall:
        t += timedelta(minutes=1)
    low = t - timedelta(minutes=1)
    for _ in range(60):  # back to the second within the minute
        if (t - timedelta(seconds=1)) > low and (t - timedelta(seconds=1)).astimezone(zone).replace(
            tzinfo=None
        ) >= wall:
            t -= timedelta(seconds=1)
        else:
            break
    return t


def _is_day(day: date, choice: Choice) -> bool:
    if choice.frequency == "weekdays":
        return day.isoweekday() <= 5
    if choice.frequency == "weekly":
        return day.isoweekday() == choice.weekday
    return True


@functools.lru_cache(maxsize=100_000)
def period(day: date, choice: Choice) -> tuple[datetime, datetime]:
    """The period of the local date `day` as instants [start, end)."""
    zone = ZoneInfo(choice.zone)
    if choice.frequency == "weekly":
        first = day - timedelta(days=day.isoweekday() - 1)
        last = first + timedelta(days=7)
    else:
        first, last = day, day + timedelta(days=1)
    return (
        first_at_or_after(datetime.combine(first, time()), zone),
        first_at_or_after(datetime.combine(last, time()), zone),
    )


def moments(choice: Choice, after: datetime, until: datetime) -> list[tuple[datetime, date]]:
    """(moment, its local date) of `choice` in (after, until], oldest first."""
    zone = ZoneInfo(choice.zone)
    found = []
    day = after.astimezone(zone).date() - timedelta(days=2)
    while day <= until.astimezone(zone).date() + timedelta(days=1):
        starts, ends = period(day, Choice(choice.zone, "daily", choice.at, 1))
        if starts < ends and _is_day(day, choice):
            due = first_at_or_after(datetime.combine(day, choice.at), zone)
            if after < due <= until:
                found.append((due, day))
        day += timedelta(days=1)
    return found


def expected(
    timeline: list[tuple[datetime, Choice]], start: datetime, end: datetime
) -> list[tuple[datetime, str]]:
    """(moment, outcome) of each period settled for one person whose choice is
    `timeline[i][1]` from `timeline[i][0]` on, with a run at every tick in [start, end),
    the schedule's clock at `start - TICK`, and the person created then too."""
    records: list[tuple[datetime, str]] = []
    previous: Choice | None = None
    last_run = start - TICK
    tick = start
    while tick < end:
        choice = [c for at, c in timeline if at <= tick][-1]
        lower = last_run - MARGIN
        if previous is not None and choice != previous:
            length = timedelta(days=7 if choice.frequency == "weekly" else 1)
            lower = min(lower, tick - length - MARGIN)
        anchor = max((m for m, _ in records), default=start - TICK)
        due = []
        for moment, day in moments(choice, lower, tick):
            starts, ends = period(day, choice)
            # Looking back (before this run's window): never a moment at or before their
            # last settled one (nor before they existed).
            if moment <= last_run - MARGIN and moment <= anchor:
                continue
            # ... nor one of a period that had ended by the last run (lived under the
            # choice they had then: never owed by the new one).
            if moment <= last_run - MARGIN and ends <= last_run - MARGIN:
                continue
            if any(starts <= m < ends for m, _ in records):
                continue
            due.append(moment)
        for i, moment in enumerate(due):
            latest = i == len(due) - 1
            records.append((moment, "queued" if latest and tick - moment <= GRACE else "missed"))
        previous, last_run = choice, tick
        tick += TICK
    return records
