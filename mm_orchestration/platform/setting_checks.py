"""The checks behind each setting: what a value must be to be accepted, in the setting's
own words, never quoting the value (any setting may hold a secret pasted into the wrong
variable). Each raises SettingsError naming the setting and what is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

from mm_orchestration.platform import cron as dagster_cron
from mm_orchestration.platform.inventory import INVENTORY
from mm_orchestration.platform.processes import missing_executables
from mm_orchestration.platform.text import NOT_SHOWN
from mm_orchestration.platform.zones import zone_name

NAMES = tuple(spec.name for spec in INVENTORY)
# The PostgreSQL client tools that MM_PG_BIN_DIR must hold (the restore drill's).
PG_CLIENT_TOOLS = ("pg_dump", "pg_restore", "psql")


class SettingsError(ValueError):
    """A setting in the environment is missing or malformed; the message names it."""


def ascii_integer(value: str, low: int, high: int) -> int:
    """The whole number `value` says, written in the digits 0-9 and from `low` to `high`;
    ValueError otherwise, its message saying what is wrong and what is accepted.

    Python's int() also takes other scripts' digits (`١٠`), signs, underscores (`1_0`) and
    surrounding spaces; none of those is what an operator meant to write, so only ASCII
    digits are read.
    """
    accepted = f"Accepted: a whole number from {low} to {high}, in the digits 0-9"
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"is not a whole number. {accepted}")
    # A run of digits longer than any range here is out of range whatever it says, and
    # converting thousands of digits is refused by Python itself (sys.int_info).
    if len(value.lstrip("0")) > len(str(high)) or not low <= int(value) <= high:
        raise ValueError(f"is out of range. {accepted}")
    return int(value)


def bounded_integer(name: str, value: str, low: int, high: int) -> int:
    """ascii_integer for the setting `name`: SettingsError naming it and the range (never
    the value)."""
    try:
        return ascii_integer(value, low, high)
    except ValueError as exc:
        raise SettingsError(f"{name} {exc}; {NOT_SHOWN}") from None


def unprintable(value: str) -> str | None:
    """Why `value` cannot be part of a URL as written, or None: URLs are ASCII without
    spaces (a host name in another script is written in its xn-- form)."""
    if not value.isascii():
        return "it has characters that are not ASCII (write a host name in its xn-- form)"
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return "it has a space or a control character"
    return None


def check_time_zone(value: str) -> None:
    """MM_TIMEZONE: a named IANA zone of a place or UTC, spelt as the tz database spells it
    (as PostgreSQL also knows it); not the database's internal files (`localtime`,
    `posixrules`) nor `Factory`, which loads but is no zone anyone lives in."""
    if zone_name(value) != value:
        raise SettingsError(
            "MM_TIMEZONE is not an IANA time zone name. Accepted: a zone as the tz database "
            f"spells it, e.g. Australia/Sydney, Australia/Perth or UTC; {NOT_SHOWN}"
        )


def check_data_dir(value: str) -> None:
    """MM_DATA_DIR: a folder path (it need not exist yet), not a file, without control
    characters (they would end up in every path the jobs print)."""
    problem = unprintable(value)
    if not problem and Path(value).exists() and not Path(value).is_dir():
        problem = "it is a file, not a folder"
    if problem:
        raise SettingsError(
            f"MM_DATA_DIR is refused: {problem}. Accepted: a folder the jobs may write "
            f"(created when missing), e.g. /var/lib/mm-orchestration; {NOT_SHOWN}"
        )


def check_header_secret(name: str, value: str) -> None:
    """A secret sent in an HTTP header: printable Latin-1 text (a pasted key often brings a
    line break or a typographic quote; the ends are already trimmed). Never shows it."""
    bad = [c for c in value if not (" " <= c <= "~" or "\xa0" <= c <= "\xff")]
    if bad:
        kind = (
            "has a control character"
            if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in bad)
            else "has a character outside Latin-1 (a typographic quote or dash?)"
        )
        raise SettingsError(
            f"{name} {kind}; it is sent in an HTTP header, so it must be printable text "
            f"as the provider issued it (copy it again from the provider's console); {NOT_SHOWN}"
        )


def check_pg_bin_dir(value: str) -> None:
    folder = Path(value)
    if not folder.is_absolute() or not folder.is_dir():
        raise SettingsError(
            "MM_PG_BIN_DIR is not an absolute path to a folder: name the bin folder of the "
            "PostgreSQL client tools of the server's major version, e.g. "
            f"/usr/lib/postgresql/17/bin (Debian's postgresql-client-17); {NOT_SHOWN}"
        )
    missing = missing_executables(folder, PG_CLIENT_TOOLS)
    if missing:
        raise SettingsError(
            f"MM_PG_BIN_DIR has no {', '.join(missing)}: name the bin folder of the PostgreSQL "
            "client tools of the server's major version, e.g. /usr/lib/postgresql/17/bin; "
            f"{NOT_SHOWN}"
        )


def schedule_overrides(value: str | None) -> tuple[tuple[str, str], ...]:
    """`MM_SCHEDULE_OVERRIDES="share-link-expiry=* * * * *; invite-cleanup=0 3 * * *"`.

    Each cron is checked here the way Dagster will read it (Dagster's own validity rule,
    and at least one tick within a year by Dagster's iteration), so a bad one fails the
    load naming this setting and the job (one of the inventory's names, the only part of
    the value a message shows), not later inside Dagster.
    """
    if value is None:
        return ()
    overrides: dict[str, str] = {}
    items = filter(None, (part.strip() for part in value.split(";")))
    for number, item in enumerate(items, start=1):
        job, sep, cron = (text.strip() for text in item.partition("="))
        if not sep or job not in NAMES:
            raise SettingsError(
                f"MM_SCHEDULE_OVERRIDES: item {number} must be <job>=<cron> with a job of the "
                f"inventory ({', '.join(NAMES)}); {NOT_SHOWN}"
            )
        if job in overrides:
            # Which of the two an operator meant cannot be known; keeping either one
            # would run the job on a schedule nobody chose.
            raise SettingsError(
                f"MM_SCHEDULE_OVERRIDES names {job} twice (items {list(overrides).index(job) + 1}"
                f" and {number}). Accepted: each job at most once, <job>=<cron> items "
                f"separated by semicolons; {NOT_SHOWN}"
            )
        try:
            dagster_cron.check(cron)
        except ValueError as exc:
            raise SettingsError(
                f"MM_SCHEDULE_OVERRIDES: the cron of {job} is refused: {exc}. "
                f"Accepted: {dagster_cron.ACCEPTED}; {NOT_SHOWN}"
            ) from None
        overrides[job] = cron
    return tuple(overrides.items())


# Above this a "timeout" stops bounding anything: a run would wait minutes on one call.
MAX_TIMEOUT_SECONDS = 300.0
_ASCII_SECONDS = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3})?")


def seconds(name: str, value: str | None, default: float) -> float:
    """A timeout in seconds: ASCII digits with an optional fraction (`2.5`), more than 0
    and at most MAX_TIMEOUT_SECONDS."""
    if value is None:
        return default
    if not _ASCII_SECONDS.fullmatch(value):
        raise SettingsError(
            f"{name} is not a number of seconds: digits 0-9 with an optional fraction, e.g. "
            f"{default:g} or 2.5; {NOT_SHOWN}"
        )
    number = float(value)
    if not 0 < number <= MAX_TIMEOUT_SECONDS:
        raise SettingsError(
            f"{name} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds; {NOT_SHOWN}"
        )
    return number
