"""Cron strings read the way Dagster reads them: the project's only cron interpretation.

Settings check an override with Dagster's own validity rule, `mm-jobs list` shows the
tick the daemon will run, and `scheduling.runtime_limit` measures the gap between
ticks, all from Dagster's schedule iteration (daylight saving included), so nothing an
operator reads can disagree with what the scheduler does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

ACCEPTED = (
    "five space-separated ASCII fields, minute (0-59) hour (0-23) day-of-month (1-31) "
    "month (1-12) day-of-week (0-7), each *, a number, a list, a range or a step, "
    "e.g. '*/15 * * * *' or '0 8 * * 1-5', firing at least once a year"
)


def ticks(cron: str | Sequence[str], timezone: str | None, after: datetime) -> Iterator[datetime]:
    """Dagster's ticks of `cron` in `timezone` (UTC when None) strictly after `after`,
    as aware datetimes in that zone."""
    # Dagster 1.13 exports no public way to iterate a schedule's ticks: the daemon
    # (RemoteSchedule.execution_time_iterator), the UI's future ticks and time-window
    # partitions all call this private iterator. Importing it here, and nowhere else,
    # keeps one cron interpretation (Dagster's) and one place to change on upgrade.
    from dagster._utils.schedules import schedule_execution_time_iterator

    # Like the daemon, a tick at `after` itself is already due, not next.
    for tick in schedule_execution_time_iterator(after.timestamp(), cron, timezone):
        if tick.timestamp() > after.timestamp():
            yield tick


def next_tick(
    cron: str | Sequence[str], timezone: str | None, after: datetime | None = None
) -> datetime:
    """The next tick the daemon will run for a schedule with this cron and execution
    time zone (a ScheduleDefinition's `cron_schedule` and `execution_timezone`)."""
    return next(ticks(cron, timezone, after or datetime.now(UTC)))


def check(cron: str, after: datetime | None = None) -> None:
    """Raise ValueError saying what is wrong unless Dagster accepts `cron` as a schedule
    and it fires at least once in the year after `after` (default: now). The message
    never quotes `cron` (it comes from a setting, which may hold a secret by mistake)."""
    if not cron.isascii():
        raise ValueError(
            "it has characters that are not ASCII (another script's digit, a no-break "
            "space, a typographic quote?)"
        )
    # Imported here: every `mm-jobs` command reads the settings, and most (dlq, migrate,
    # seed-demo, a refusal) never need Dagster, whose import is most of their start-up.
    from dagster import DagsterInvalidDefinitionError, ScheduleDefinition

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Dagster's own validity rule, through its public constructor.
            ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except DagsterInvalidDefinitionError:
        fields = len(cron.split())
        hint = f" (it has {fields} fields, not 5)" if fields != 5 else ""
        raise ValueError(f"Dagster does not accept it as a cron expression{hint}") from None
    start = after or datetime.now(UTC)
    try:
        first: float | None = next(ticks(cron, "UTC", start)).timestamp()
    except ValueError:  # Dagster's croniter gives up on dates that never come (31 April)
        first = None
    if first is None or first > (start + timedelta(days=366)).timestamp():
        raise ValueError("by Dagster's schedule iteration it does not fire within a year")


def shortest_interval(cron: str, timezone: str, after: datetime | None = None) -> int:
    """Seconds between the two closest of the next ticks (`*/5 * * * *`: 300,
    `5,50 * * * *`: 900, `0 8 * * *`: 86400), sampled over at least a day."""
    start = after or datetime.now(UTC)
    horizon = start + timedelta(days=1)
    gaps: list[float] = []
    previous: datetime | None = None
    for tick in ticks(cron, timezone, start):
        if previous is not None:
            gaps.append(tick.timestamp() - previous.timestamp())  # real time, not wall clock
        previous = tick
        if tick > horizon and len(gaps) >= 2:
            break
    return int(min(gaps))
