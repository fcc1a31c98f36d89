"""When each person's digest is due: their chosen local time, in their own zone, once per
period (their local day, or their local ISO week when weekly).

People share a handful of choices (zone, frequency, time, weekday), so the moments are
worked out here once per choice, with the pinned tz database (`zoneinfo` reading the
`tzdata` package only: zones.py), and the database then picks the people who made the
choices that are due (`settle`). PostgreSQL is handed instants, never
asked for a local time.

A period is a span of instants, not a date's text: the person's local day (or ISO week)
in the zone they have when it is worked out, from the first instant of its first day to
the first instant of the next. So a person who moves west across the date line has a
new "1 December" that their old zone's 1 December does not cover.

Local time is not a straight line, and the rules hold for a transition of any size
(Lord Howe's half hour, Troll's two hours, Samoa's skipped day):
- A chosen time that does not exist that day (it falls in a gap: 02:30 on Sydney's first
  Sunday of October) is due at the first moment after it, the transition itself (03:00
  local): `moved`.
- A chosen time that happens twice (an overlap: 02:30 on Sydney's first Sunday of April)
  is due at its first occurrence, once: `merged` (the period is the local day, and a
  period's digest is sent once).
- A day that does not exist at all (Pacific/Apia had no 30 December 2011) has no period
  and so no digest.
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


# How a moment came to be where it is (counted in a run's metadata, shown by preview).
ON_TIME, MOVED, MERGED = "on_time", "moved", "merged"


@dataclass(frozen=True)
class Moment:
    """One period's digest moment for a choice: the period's key (its bounds as UTC
    instants, `2026-11-30T13:00:00Z/2026-12-01T13:00:00Z`), the instant it is due (UTC),
    the period's bounds as instants (start inclusive, end exclusive), the local date it
    belongs to, and how it was placed (ON_TIME, MOVED out of a gap, MERGED in an overlap).
    """

    period: str
    due: datetime
    starts: datetime
    ends: datetime
    day: date
    shift: str = ON_TIME


def period_length(frequency: str) -> timedelta:
    """How long one period of `frequency` is: a week when weekly, else a day."""
    return timedelta(days=7) if frequency == "weekly" else timedelta(days=1)


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


def period_key(starts: datetime, ends: datetime) -> str:
    """A period's key: its bounds as UTC instants (ISO 8601's start/end interval)."""
    return f"{starts.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}/{ends.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def period_of(day: date, frequency: str, zone: ZoneInfo) -> tuple[str, datetime, datetime]:
    """The period containing the local date `day`: its key and its bounds as instants
    (empty, starts == ends, for a day that does not exist in `zone`)."""
    if frequency == "weekly":
        monday = day - timedelta(days=day.isoweekday() - 1)
        starts, _ = _day_bounds(monday, zone)
        _, ends = _day_bounds(monday + timedelta(days=6), zone)
    else:
        starts, ends = _day_bounds(day, zone)
    return period_key(starts, ends), starts, ends


def placed(wall: datetime, zone: ZoneInfo) -> tuple[datetime, str]:
    """The instant the wall-clock time `wall` is due in `zone` and how it was placed: as it
    reads (ON_TIME), at the transition after a gap that swallows it (MOVED), or at the
    first of its two occurrences in an overlap (MERGED)."""
    due = first_instant_at_or_after(wall, zone)
    if local(due, zone) != wall:
        return due, MOVED
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if second != due and local(second, zone) == wall:
        return due, MERGED
    return due, ON_TIME


def _is_digest_day(day: date, choice: Choice) -> bool:
    if choice.frequency == "daily":
        return True
    if choice.frequency == "weekdays":
        return day.isoweekday() <= 5
    if choice.frequency == "weekly":
        return day.isoweekday() == choice.weekday
    return False  # 'off'


# The most a wall clock moves at a transition: a whole day and more (Samoa skipped 30
# December 2011 going from UTC-10 to UTC+14); ordinary changes are an hour or two.
_SHIFT = timedelta(hours=26)


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
            due, shift = placed(wall, zone)
            if after < due <= until:
                period, starts, ends = period_of(day, choice.frequency, zone)
                day_starts, day_ends = _day_bounds(day, zone)
                if day_starts < day_ends:  # a day that does not exist has no digest
                    yield Moment(period, due, starts, ends, day, shift)
        day += timedelta(days=1)


def current_period(choice: Choice, now: datetime) -> Moment:
    """The period `now` falls in for `choice`, due `now` (an operator's "send it now")."""
    zone = zone_info(choice.zone)
    day = local(now, zone).date()
    period, starts, ends = period_of(day, choice.frequency, zone)
    return Moment(period, now, starts, ends, day)


def scheduled_moment(choice: Choice, now: datetime) -> Moment | None:
    """The digest moment of the period `now` falls in for `choice`, as scheduled (None
    for a period without one: a weekend day for `weekdays`), for `mm-jobs digest
    preview` to say when and how it goes."""
    current = current_period(choice, now)
    for moment in moments_between(choice, current.starts - _SHIFT, current.ends + _SHIFT):
        if moment.starts == current.starts:
            return moment
    return None


def horizon(day: date, zone: str) -> datetime:
    """The end of the local day after `day` in `zone` (a task due before it is "due
    soon" in a digest of `day`)."""
    return first_instant_at_or_after(
        datetime.combine(day + timedelta(days=2), time()), zone_info(zone)
    )
