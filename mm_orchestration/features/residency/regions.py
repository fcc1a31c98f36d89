"""Where each region is: the region-to-country map and the vendors' regions, kept as data
in `regions.toml` so that compliance can read and amend them without reading code."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

UNKNOWN = "unknown"
# The residency rule: a tenant's data (database, backups, videos) stays in Australia.
# Whether a region is onshore follows from its country in the map, so a region is never
# known to be Australian in one place and missing from a list in another.
HOME_COUNTRY = "AU"


@dataclass(frozen=True)
class VendorRegion:
    """Where a vendor keeps the portal's data, and where that fact comes from."""

    system: str
    vendor: str
    data_categories: str
    region: str
    source: str


@cache
def _data() -> dict:
    return tomllib.loads((resources.files(__package__) / "regions.toml").read_text("utf-8"))


@cache
def region_country() -> dict[str, str]:
    """Every region name the report knows (lower case) -> its ISO country code, Neon's
    prefixed names included."""
    data = _data()
    found: dict[str, str] = {}
    for table, regions in data.items():
        if table in ("neon_prefixes", "vendor_regions"):
            continue
        found.update(regions)
        prefix = data["neon_prefixes"].get(table)
        if prefix:
            found.update({f"{prefix}{region}": code for region, code in regions.items()})
    return found


def country(region: str) -> str:
    """The ISO country code of `region`, or `unknown` when the map does not know it."""
    return region_country().get(region.strip().lower(), UNKNOWN)


def vendors() -> tuple[VendorRegion, ...]:
    """The vendors' regions, each with its named source."""
    return tuple(VendorRegion(**entry) for entry in _data()["vendor_regions"])
