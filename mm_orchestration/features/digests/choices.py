"""What people chose for their digest, read once and judged: a run reads each distinct
choice (zone, frequency, time, weekday) of the eligible people, never each person.

Per-row trust: the choices are read as stored and each distinct one judged before any
statement uses it (`judged`): a zone both PostgreSQL and Python know, in any case, else
MM_TIMEZONE; an unknown frequency is 'daily', a weekday out of 1-7 Monday, a missing time
08:00. The statements only ever see judged values, so no row can make them raise; the
people who fell back are counted and their ids returned (never their addresses).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from mm_orchestration.features.digests.moments import DEFAULT_TIME, FREQUENCIES, Choice
from mm_orchestration.features.digests.statements import CHOICES
from mm_orchestration.platform.zones import zone_name


@dataclass(frozen=True)
class RawChoice:
    """One distinct choice as stored, how many eligible people made it, and what it means
    (`choice` None for 'off'; `fell_back` when a value could not be read as stored)."""

    key: str  # statements.RAW_CHOICE, to find its people again
    people: int
    choice: Choice | None
    fell_back: bool
    checksum: int = 0  # of the people's ids: who they are, for digest_groups


def read_choices(
    conn: psycopg.Connection,
    fallback_tz: str,
    tenant: uuid.UUID | None,
    user: uuid.UUID | None,
) -> list[RawChoice]:
    """Every distinct choice of the eligible people, judged (see `judged`)."""
    # Never prepared: a generic plan for it (after five runs on one connection) was ten
    # times slower than the plan for the values at hand.
    rows = conn.execute(CHOICES, {"tenant": tenant, "user": user}, prepare=False).fetchall()
    return [judged(row, fallback_tz) for row in rows]


def judged(row: tuple[Any, ...], fallback_tz: str) -> RawChoice:
    """A stored choice read without trusting it: a zone our tz rules know (any case;
    PostgreSQL is never asked for a local time, so its list does not matter), else
    `fallback_tz`; a frequency of FREQUENCIES, else daily; a time, else 08:00; a weekday
    1-7 when weekly, else Monday."""
    key, timezone, stored, at, weekday, people, checksum = row
    zone = zone_name(timezone)
    fell_back = zone is None
    # Any case, as zones are: 'OFF' is off, never a daily digest.
    frequency = (stored or "").strip().lower()
    if frequency not in FREQUENCIES:
        frequency, fell_back = "daily", True
    if at is None:
        at, fell_back = DEFAULT_TIME, True
    if frequency == "weekly" and not (isinstance(weekday, int) and 1 <= weekday <= 7):
        weekday, fell_back = 1, True
    if frequency == "off":
        return RawChoice(key, people, None, fell_back, checksum)
    choice = Choice(zone or fallback_tz, frequency, at, weekday or 1)
    return RawChoice(key, people, choice, fell_back, checksum)
