"""Time zones named by portal rows and settings, read without trusting the name, and read
by one set of rules: the pinned `tzdata` package's.

A zone name comes from a browser or a person: `Etc/Unknown`, `europe/london`, a folder of
the tz database (`Australia`), an internal file (`posixrules`), a path. `ZoneInfo` raises
a different error for each (and reads a folder as a file), so every name goes through
`place_zone`, which knows the database's list of zones and matches it case-insensitively
(as PostgreSQL's `AT TIME ZONE` does).

One source of rules. Python's `zoneinfo` reads the operating system's zone files before
the `tzdata` package, and PostgreSQL reads the files it was built with: three copies that
disagree whenever a country changes its law (British Columbia's permanent daylight time
from November 2026 is in tzdata 2026 and not in Debian 12's 2025b). So this package makes
every process that imports it read the pinned package only (`use_pinned_rules`, done at
import), the digest does all of its local-time arithmetic here and hands PostgreSQL
instants and offsets (`offsets`), and `disagreements` says where PostgreSQL's own rules
differ, naming both versions.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, available_timezones

if TYPE_CHECKING:
    import psycopg

# In the tz database but no zone anyone lives in.
NOT_PLACES = frozenset({"Factory", "localtime", "posixrules", "posixrules.tzdata"})
# The earliest instant whose offset the digest ever needs (a task overdue since then).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def use_pinned_rules() -> None:
    """Read zones from the pinned `tzdata` package only, never the operating system's
    files (which may be older or newer than the package, and differ between machines)."""
    if zoneinfo.TZPATH:
        zoneinfo.reset_tzpath(to=())
        ZoneInfo.clear_cache()
        _zones_by_folded_name.cache_clear()


def rules_version() -> str:
    """The IANA release of the rules this process reads (`2026f`)."""
    import tzdata

    return str(tzdata.IANA_VERSION)


@functools.cache
def _zones_by_folded_name() -> dict[str, str]:
    names: dict[str, str] = {}
    for name in sorted(available_timezones() - NOT_PLACES):
        names.setdefault(name.casefold(), name)
    return names


def zone_name(name: str | None) -> str | None:
    """The tz database's own spelling of the zone `name` names (any case), or None."""
    if not name:
        return None
    return _zones_by_folded_name().get(name.strip().casefold())


def place_zone(name: str | None) -> ZoneInfo | None:
    """The zone `name` names (any case), or None when it names none."""
    known = zone_name(name)
    return ZoneInfo(known) if known else None


@dataclass(frozen=True)
class Span:
    """One stretch of a zone's history with one UTC offset: [starts, ends), offset in
    seconds east of UTC."""

    starts: datetime
    ends: datetime
    offset: int


def _offset(zone: ZoneInfo, instant: datetime) -> int:
    delta = instant.astimezone(zone).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def transitions(zone: str, since: datetime, until: datetime) -> list[datetime]:
    """Every instant in (since, until] at which `zone`'s UTC offset changes, to the second
    (the tz database's transitions are on whole seconds). Found by stepping through the
    period in 12-hour steps (no zone changes twice in 12 hours) and halving each step
    whose ends differ."""
    info = ZoneInfo(zone)
    step = timedelta(hours=12)
    found = []
    low, low_offset = since, _offset(info, since)
    while low < until:
        high = min(low + step, until)
        high_offset = _offset(info, high)
        if high_offset != low_offset:
            a, b = int(low.timestamp()), int(high.timestamp())
            while b - a > 1:
                middle = (a + b) // 2
                if _offset(info, datetime.fromtimestamp(middle, UTC)) == low_offset:
                    a = middle
                else:
                    b = middle
            found.append(datetime.fromtimestamp(b, UTC))
        low, low_offset = high, high_offset
    return found


@functools.lru_cache(maxsize=1024)
def _spans(zone: str, until: datetime) -> tuple[Span, ...]:
    info = ZoneInfo(zone)
    edges = [EPOCH, *transitions(zone, EPOCH, until), until]
    spans = [Span(a, b, _offset(info, a)) for a, b in zip(edges, edges[1:], strict=False) if a < b]
    # Before the epoch, and after `until`, the nearest span's offset holds.
    spans[0] = Span(datetime.min.replace(tzinfo=UTC), spans[0].ends, spans[0].offset)
    spans[-1] = Span(spans[-1].starts, datetime.max.replace(tzinfo=UTC), spans[-1].offset)
    return tuple(spans)


def offsets(zones: Iterable[str], until: datetime) -> list[tuple[str, Span]]:
    """Each zone's history as spans of one offset, from the epoch to `until` (rounded up
    to a day, so that a process reuses them), for SQL to read local times by: `instant +
    offset` within the span that holds it."""
    day = (until + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return [(zone, span) for zone in sorted(set(zones)) for span in _spans(zone, day)]


@dataclass(frozen=True)
class Disagreement:
    """An instant at which PostgreSQL's rules give a zone another offset than ours."""

    zone: str
    instant: datetime
    ours: int
    postgres: int | None  # None: PostgreSQL does not know the zone

    def __str__(self) -> str:
        theirs = "unknown" if self.postgres is None else f"{self.postgres:+d} s"
        when = f"{self.instant:%Y-%m-%d %H:%M:%SZ}"
        return f"{self.zone} at {when}: ours {self.ours:+d} s, PostgreSQL {theirs}"


def disagreements(
    conn: psycopg.Connection, zones: Iterable[str], since: datetime, until: datetime
) -> list[Disagreement]:
    """Where PostgreSQL's rules differ from ours for `zones` between `since` and
    `until`: each of our transitions (a second either side) and each end compared with
    what PostgreSQL's `AT TIME ZONE` says. The digest never asks PostgreSQL for local
    times, so a disagreement misleads only SQL written elsewhere; it is reported with
    both versions (`describe`)."""
    names, instants, ours = [], [], []
    for zone in sorted(set(zones)):
        info = ZoneInfo(zone)
        points = [since, until]
        for moment in transitions(zone, since, until):
            points += [moment - timedelta(seconds=1), moment]
        for point in points:
            names.append(zone)
            instants.append(point)
            ours.append(_offset(info, point))
    if not names:
        return []
    rows = conn.execute(
        """SELECT z, t, CASE WHEN ops.time_zone_known(z) THEN
                  extract(epoch FROM (t AT TIME ZONE z) - (t AT TIME ZONE 'UTC'))::int END
             FROM unnest(%s::text[], %s::timestamptz[]) AS x(z, t)""",
        [names, instants],
    ).fetchall()
    return [
        Disagreement(zone, instant, mine, theirs)
        for (zone, instant, theirs), mine in zip(rows, ours, strict=True)
        if theirs != mine
    ]


def describe(conn: psycopg.Connection, found: list[Disagreement]) -> str:
    """The disagreements in one line, naming both sets of rules."""
    row = conn.execute("SHOW server_version").fetchone()
    server = row[0] if row else "?"
    shown = "; ".join(str(d) for d in found[:5]) + ("; ..." if len(found) > 5 else "")
    return (
        f"time zone rules differ between tzdata {rules_version()} (ours, used for every "
        f"digest moment) and PostgreSQL {server}'s own zone files: {shown}"
    )
