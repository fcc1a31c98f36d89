"""What every `mm-jobs` command shares: argument types, the operator's name, the
connection to the portal database, and how a command refuses.

An argument that is refused is named, with what is accepted, never quoted back: what
was typed may be a secret pasted into the wrong place, and terminals are recorded. A
refusal is one JSON line on stderr (`refuse`), as a log collector reads every other line.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mm_orchestration.monitoring.log_lines import json_line
from mm_orchestration.platform.settings import Settings, SettingsError, ascii_integer
from mm_orchestration.platform.text import NOT_SHOWN, reason_without_value

# Bounds of the whole-number arguments (read by settings.ascii_integer, like the settings).
ROW_ID_RANGE = (1, 2**63 - 1)  # a bigint id
LIMIT_RANGE = (1, 1_000_000)
SCALE_RANGE = (1, 10_000)
EXIT_REFUSED = 2  # a refused argument or setting, named


def refuse(message: str, code: int = EXIT_REFUSED, **fields: Any) -> int:
    """Say why the command stops, as one JSON line on stderr (`event` the message, which
    names the argument or setting and never holds its value); the exit code."""
    print(json_line(logging.ERROR, "mm-jobs", message, exitCode=code, **fields), file=sys.stderr)
    return code


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` in the digits 0-9, by the
    settings' own rule (argparse's int would take `١٠`, `+1` and `1_0`)."""

    def parse(value: str) -> int:
        try:
            return ascii_integer(value, low, high)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"the value {exc}; {NOT_SHOWN}") from None

    return parse


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """An argparse type for a fixed list (argparse's `choices` would quote what was typed)."""

    def parse(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"the value is not one of {', '.join(choices)}; {NOT_SHOWN}"
            )
        return value

    return parse


MAX_ACTOR = 254  # an email address at most


def actor(value: str) -> str:
    """`--actor`: a person's name as the audit log shows it: one line of visible text (a
    newline or a control character could forge a line of a listing or the CSV), at most
    an email address long."""
    name = value.strip()
    if not name or len(name) > MAX_ACTOR or not name.isprintable():
        raise argparse.ArgumentTypeError(
            f"must be a person's name or email address: visible characters only, at most "
            f"{MAX_ACTOR} (got {len(value)} character(s))"
        )
    return name


def os_user() -> str:
    """Who really ran the command (recorded beside --actor, which anyone may type)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def address(value: str) -> str:
    """`--to`: one address SendGrid will take (the outbox's own rule)."""
    from mm_orchestration.platform.outbox.addresses import address_problem, sendable_address

    problem = address_problem(value)
    if problem:
        # email-validator's reason may quote the address: kept only when it quotes none.
        reason = reason_without_value(problem, value, "it is not one email address").rstrip(".")
        raise argparse.ArgumentTypeError(f"the value is not an address: {reason}; {NOT_SHOWN}")
    return sendable_address(value)


def tick(value: str) -> str:
    """`--window`: a schedule tick as the ledger names its window (UTC, to the second)."""
    from mm_orchestration.platform.scheduling import tick_of, window_key

    try:
        tick = tick_of(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the value is not a schedule tick (UTC, like 2026-11-30T08:00:00Z); {NOT_SHOWN}"
        ) from None
    return window_key(tick)


_MOMENT = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?",
    re.ASCII,
)


def moment(value: str) -> datetime:
    """`--since`: a date (midnight) or a date and time, in MM_TIMEZONE unless it says."""
    from zoneinfo import ZoneInfo

    try:
        # Only the two forms the help names: fromisoformat alone also takes ISO weeks
        # (2026-W48) and compact forms (20261130), which an operator never means here.
        if not _MOMENT.fullmatch(value.strip()):
            raise ValueError(value)
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the value is not a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM); {NOT_SHOWN}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(Settings.from_env().timezone))
    return moment


def instant(value: str) -> datetime:
    """`--at`: an instant with its offset (a wall time alone would be a guess at the zone)."""
    from mm_orchestration.platform.scheduling import parse_instant

    try:
        instant = parse_instant(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "the value is not an instant with its offset (2026-11-30T08:00:00+11:00 or "
            f"2026-11-29T21:00:00Z); {NOT_SHOWN}"
        ) from None
    # A digest's window reaches a week back and a day ahead: the years at either end of
    # the calendar would overflow it (and no one's digest is there).
    if not datetime(1970, 1, 1, tzinfo=UTC) <= instant <= datetime(9000, 1, 1, tzinfo=UTC):
        raise argparse.ArgumentTypeError(f"the value is out of range (1970 to 9000); {NOT_SHOWN}")
    return instant


def printable(text: object) -> str:
    """Stored text as one line of itself: a newline or an escape sequence inside an event id
    could otherwise forge listing lines or recolour the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def json_lines(value: Any) -> str:
    """Indented JSON with stored text readable (names in any script) but every character a
    terminal would act on escaped, as JSON escapes it (\u001b, \u2028)."""
    import json

    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    # json escapes C0 controls already; what is left (C1 controls, line separators, bidi
    # overrides) only occurs inside strings, where an escape means the same character.
    return "".join(ch if ch == "\n" or ch.isprintable() else json.dumps(ch)[1:-1] for ch in text)


def database_url(settings: Settings) -> str:
    url = settings.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise SettingsError(
            "DATABASE_URL is not set and no local stack is running (no embedded PostgreSQL "
            f"in {Path(settings.data_dir, 'postgres').resolve()}): start it with `make dev`, "
            "or export DATABASE_URL"
        )
    return url


# The URL local_settings found for the running local stack's embedded server, so that a
# refusal names that server (is the stack running?) rather than a DATABASE_URL nobody set.
_found_locally: list[str] = []


def local_settings() -> Settings:
    """Settings, with the embedded server's URL filled in when it is running locally.

    Only the portal's URL is filled in: Dagster's storage always comes from DAGSTER_HOME's
    dagster.yaml (mm_orchestration.platform.instance), never from DATABASE_URL. A run this
    command executes in its own process reads the URL as Dagster reads every secret, through
    `EnvVar("DATABASE_URL")`, so the found URL is also given to the process's environment:
    the one variable the CLI sets, and only for Dagster.
    """
    settings = Settings.from_env()
    if settings.database_url:
        return settings
    port_file = Path(settings.data_dir, "postgres", "port")
    if (
        port_file.exists()
        and Path(settings.data_dir, "postgres", "data", "postmaster.pid").exists()
    ):
        url = f"postgresql://postgres@127.0.0.1:{port_file.read_text().strip()}/portal"
        os.environ["DATABASE_URL"] = url
        _found_locally[:] = [url]
        return Settings.from_env()
    return settings


def connection(
    settings: Settings | None = None, autocommit: bool = True, direct: bool = False
) -> Any:
    """A connection to the portal database `settings` name (default: local_settings, the
    running local stack's server when nothing is set); `direct`: DATABASE_DIRECT_URL when it
    is set (a session advisory lock must not go through a pooler). A database that cannot
    be reached or refuses the connection stops the command with a SettingsError naming the
    setting, never its value (the command then refuses, exit 2)."""
    from mm_orchestration.platform.db import connect

    settings = settings or local_settings()
    if direct and settings.database_direct_url:
        return connect(settings.database_direct_url, autocommit, setting="DATABASE_DIRECT_URL")
    url = database_url(settings)
    if url in _found_locally:
        where = Path(settings.data_dir, "postgres").resolve()
        advice = (
            f"DATABASE_URL is unset, so this is the local stack's server ({where}): is "
            "`make dev` running?"
        )
        return connect(
            url, autocommit, setting="the local stack's PostgreSQL", if_unanswered=advice
        )
    return connect(url, autocommit, setting="DATABASE_URL")
