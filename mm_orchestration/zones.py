"""Time zones named by portal rows and settings, read without trusting the name.

A zone name comes from a browser or a person: `Etc/Unknown`, `europe/london`, a folder of
the tz database (`Australia`), an internal file (`posixrules`), a path. `ZoneInfo` raises
a different error for each (and reads a folder as a file), so every name goes through
`place_zone`, which knows the database's list of zones and matches it case-insensitively
(as PostgreSQL's `AT TIME ZONE` does).
"""

from __future__ import annotations

import functools
from zoneinfo import ZoneInfo, available_timezones

# In the tz database but no zone anyone lives in.
NOT_PLACES = frozenset({"Factory", "localtime", "posixrules", "posixrules.tzdata"})


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
