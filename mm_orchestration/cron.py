"""Next tick of a five-field cron expression in a time zone, for `mm-jobs list`.

Dagster computes the real ticks; this only tells an operator when the next one is due,
without reaching into Dagster's private modules.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


_NAMES = ("minute", "hour", "day of month", "month", "day of week")


def validate(cron: str) -> None:
    """Raise ValueError naming the field when `cron` is not a five-field expression."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"{cron!r} has {len(fields)} fields, not 5 (minute hour dom month dow)")
    for expr, name, (low, high) in zip(fields, _NAMES, _RANGES, strict=True):
        try:
            values = _field(expr, low, high)
        except ValueError:
            raise ValueError(
                f"{cron!r}: {name} field {expr!r} is not a number, range or step"
            ) from None
        if not values or min(values) < low or max(values) > high:
            raise ValueError(f"{cron!r}: {name} field {expr!r} is outside {low}-{high}")


def _field(expr: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in expr.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, stop = low, high
        elif "-" in body:
            a, b = body.split("-")
            start, stop = int(a), int(b)
        else:
            start = int(body)
            stop = high if step_text else start
        values.update(range(start, stop + 1, step))
    return values


def minute_interval(cron: str) -> int | None:
    """Seconds between ticks of an every-hour expression (`*/5 * * * *`: 300), taking the
    shortest gap; None when the hours or days are restricted (gaps of an hour or more)."""
    validate(cron)
    fields = cron.split()
    if fields[1:] != ["*", "*", "*", "*"]:
        return None
    minutes = sorted(_field(fields[0], 0, 59))
    gaps = [b - a for a, b in zip(minutes, [*minutes[1:], minutes[0] + 60], strict=True)]
    return 60 * min(gaps)


def next_tick(cron: str, timezone: str, after: datetime | None = None) -> datetime:
    """The first minute after `after` that the expression matches, in `timezone`."""
    validate(cron)
    minute, hour, dom, month, dow = (
        _field(f, lo, hi) for f, (lo, hi) in zip(cron.split(), _RANGES, strict=True)
    )
    dow = {d % 7 for d in dow}
    dom_any, dow_any = cron.split()[2] == "*", cron.split()[4] == "*"
    zone = ZoneInfo(timezone)
    t = (after or datetime.now(UTC)).astimezone(UTC).replace(second=0, microsecond=0)
    for _ in range(60 * 24 * 366):
        t += timedelta(minutes=1)
        local = t.astimezone(zone)
        day_ok_dom = local.day in dom
        day_ok_dow = (local.isoweekday() % 7) in dow
        # Standard cron: when both day fields are restricted, either may match.
        day_ok = day_ok_dom and day_ok_dow if dom_any or dow_any else day_ok_dom or day_ok_dow
        if local.minute in minute and local.hour in hour and local.month in month and day_ok:
            return local
    raise ValueError(f"cron {cron!r} has no tick within a year")
