"""When each person's digest is due: their chosen local time, in their own zone, once per
period (their local day, or their local ISO week when weekly).

People share a handful of choices (zone, frequency, time, weekday), so the moments are
worked out here once per choice, with the tz database (`zoneinfo`), and the database
then picks the people who made the choices that are due (`jobs.notification_digest`).

Local time is not a straight line, and the rules are:
- A chosen time that does not exist that day (it falls in a spring-forward gap: 02:30 on
  Sydney's first Sunday of October) is due at the first moment after it, the transition
  itself (03:00 local).
- A chosen time that happens twice (a fall-back: 02:30 on Sydney's first Sunday of April)
  is due at its first occurrence, once (the period is the local date, and a period's
  digest is sent once).
- Zones with half-hour and 45-minute offsets (Adelaide, Darwin, India, Nepal, the
  Chatham Islands) are only zones like any other here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

FREQUENCIES = ("daily", "weekdays", "weekly", "off")
DEFAULT_TIME = time(8, 0)
# The longest stretch looked back over: a weekly period and a day (a late week's digest).
LONGEST_LOOK_BACK = timedelta(days=8)


@dataclass(frozen=True)
class Choice:
    """What a group of people chose: zone name (resolved), frequency, local time, weekday
    (ISO 1 = Monday ... 7, used when weekly)."""

    zone: str
    frequency: str
    at: time
    weekday: int


@dataclass(frozen=True)
class Moment:
    """One period's digest moment for a choice: the period's key (`2026-11-30`, or
    `2026-W49` when weekly), the instant it is due (UTC), and the period's bounds as
    instants (start inclusive, end exclusive)."""

    period: str
    due: datetime
    starts: datetime
    ends: datetime


@functools.cache
def zone_info(name: str) -> ZoneInfo:
    """The zone, loaded once per process: ZoneInfo keeps only a few zones alive itself,
    and a run judges hundreds of choices across twenty zones (each reload reads a file)."""
    return ZoneInfo(name)


def local(instant: datetime, zone: ZoneInfo) -> datetime:
    """The wall-clock time at `instant` in `zone`, without its zone."""
    return instant.astimezone(zone).replace(tzinfo=None)


def first_instant_at_or_after(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the wall clock in `zone` reads `wall` or later."""
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if local(earlier, zone) == wall:
        return earlier  # it exists; fold 0 is the first of two where it happens twice
    # In a gap: fold 1 reads it with the offset after the transition (an instant before
    # it), fold 0 with the offset before (an instant after it). The transition is between:
    # found to the second (every transition in the tz database is on a whole second).
    low = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    high = int(earlier.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if local(datetime.fromtimestamp(middle, UTC), zone) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    return (
        first_instant_at_or_after(datetime.combine(day, time()), zone),
        first_instant_at_or_after(datetime.combine(day + timedelta(days=1), time()), zone),
    )


def period_of(day: date, frequency: str, zone: ZoneInfo) -> tuple[str, datetime, datetime]:
    """The period containing the local date `day`: its key and its bounds as instants."""
    if frequency == "weekly":
        year, week, weekday = day.isocalendar()
        monday = day - timedelta(days=weekday - 1)
        starts, _ = _day_bounds(monday, zone)
        _, ends = _day_bounds(monday + timedelta(days=6), zone)
        return f"{year}-W{week:02d}", starts, ends
    starts, ends = _day_bounds(day, zone)
    return day.isoformat(), starts, ends


def _is_digest_day(day: date, choice: Choice) -> bool:
    if choice.frequency == "daily":
        return True
    if choice.frequency == "weekdays":
        return day.isoweekday() <= 5
    if choice.frequency == "weekly":
        return day.isoweekday() == choice.weekday
    return False  # 'off'


# The most a wall clock moves at a transition (an hour; Lord Howe's half hour is less).
_SHIFT = timedelta(hours=1)


@functools.lru_cache(maxsize=4096)
def _wall(zone: str, instant: datetime) -> datetime:
    return local(instant, zone_info(zone))


def moments_between(choice: Choice, after: datetime, until: datetime) -> Iterator[Moment]:
    """Every digest moment of `choice` in (after, until], oldest first."""
    zone = zone_info(choice.zone)
    low, high = _wall(choice.zone, after), _wall(choice.zone, until)
    day = low.date() - timedelta(days=1)  # a moment can precede its date's start
    last = high.date()
    while day <= last:
        wall = datetime.combine(day, choice.at)
        # Far from the window's wall-clock times (with room for a transition's shift) it
        # cannot be in it: most choices of a short window end here, without the tz rules.
        if low - _SHIFT <= wall <= high + _SHIFT and _is_digest_day(day, choice):
            due = first_instant_at_or_after(wall, zone)
            if after < due <= until:
                period, starts, ends = period_of(day, choice.frequency, zone)
                yield Moment(period, due, starts, ends)
        day += timedelta(days=1)


def current_period(choice: Choice, now: datetime) -> Moment:
    """The period `now` falls in for `choice`, due `now` (an operator's "send it now")."""
    zone = zone_info(choice.zone)
    period, starts, ends = period_of(local(now, zone).date(), choice.frequency, zone)
    return Moment(period, now, starts, ends)
