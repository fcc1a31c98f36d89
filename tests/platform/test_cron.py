"""The one cron reading of the project is Dagster's: validity, ticks and intervals."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from mm_orchestration.platform.cron import check, next_tick, shortest_interval, ticks

SYDNEY = ZoneInfo("Australia/Sydney")


def test_spring_forward_runs_the_missing_time_at_the_end_of_the_gap():
    # 4 October 2026 02:30 does not exist in Sydney: Dagster runs it at 03:00 AEDT.
    tick = next_tick("30 2 * * *", "Australia/Sydney", datetime(2026, 10, 3, 12, tzinfo=SYDNEY))
    assert tick == datetime(2026, 10, 4, 3, 0, tzinfo=SYDNEY)
    assert tick.strftime("%Y-%m-%d %H:%M %Z") == "2026-10-04 03:00 AEDT"


def test_fall_back_runs_a_repeated_time_once():
    # 5 April 2026 02:30 happens twice in Sydney (AEDT, then AEST); Dagster runs the
    # later one only, and the next tick is the following night.
    after = datetime(2026, 4, 4, 12, tzinfo=SYDNEY)
    first, second = islice(ticks("30 2 * * *", "Australia/Sydney", after), 2)
    assert first.astimezone(UTC) == datetime(2026, 4, 4, 16, 30, tzinfo=UTC)  # 02:30 AEST
    assert second.astimezone(UTC) == datetime(2026, 4, 5, 16, 30, tzinfo=UTC)


def test_next_tick_is_strictly_after_and_utc_without_a_zone():
    on_tick = datetime(2026, 1, 1, 0, 15, tzinfo=UTC)
    assert next_tick("*/15 * * * *", None, on_tick) == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def test_a_leap_day_cron_fires_within_a_year_only_in_the_year_before_one():
    check("0 0 29 2 *", after=datetime(2027, 6, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="does not fire within a year"):
        check("0 0 29 2 *", after=datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("cron", ["* * * * *", "0 8 * * 1-5", "@daily", "0 9 1-7 * *"])
def test_dagster_accepts(cron):
    check(cron)


def test_shortest_interval_across_dst_is_in_real_seconds():
    # Every 15 minutes over the spring-forward night: still 15 real minutes apart.
    after = datetime(2026, 10, 4, 1, 0, tzinfo=SYDNEY)
    assert shortest_interval("*/15 * * * *", "Australia/Sydney", after) == 900
