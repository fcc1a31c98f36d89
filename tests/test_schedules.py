"""Schedules generated from the inventory: Sydney time, DST, staging intervals."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from dagster import build_schedule_context

from mm_orchestration import inventory
from mm_orchestration.cron import next_tick
from mm_orchestration.definitions import build_definitions
from mm_orchestration.ledger import WINDOW_TAG
from mm_orchestration.settings import Settings

SYDNEY = ZoneInfo("Australia/Sydney")


def schedule(settings: Settings, name: str = "share_link_expiry_schedule"):
    return build_definitions(settings).resolve_schedule_def(name)


def test_share_link_expiry_every_15_minutes_in_sydney_running_by_default():
    sched = schedule(Settings())
    assert sched.cron_schedule == "*/15 * * * *"
    assert sched.execution_timezone == "Australia/Sydney"
    assert sched.default_status.value == "RUNNING"
    assert sched.job_name == "share_link_expiry"


def test_staging_shortens_share_link_expiry_to_5_minutes():
    assert schedule(Settings(env="staging")).cron_schedule == "*/5 * * * *"


def test_mm_timezone_overrides_the_schedule_zone():
    assert schedule(Settings(timezone="Australia/Perth")).execution_timezone == "Australia/Perth"


def test_repeated_hour_at_end_of_dst_gives_two_windows():
    # 5 April 2026: Sydney clocks go back from 03:00 AEDT to 02:00 AEST, so 02:30 happens twice.
    first = datetime(2026, 4, 5, 2, 30, tzinfo=SYDNEY, fold=0)
    second = datetime(2026, 4, 5, 2, 30, tzinfo=SYDNEY, fold=1)
    assert first.utcoffset() != second.utcoffset()
    sched = schedule(Settings())
    keys = []
    for tick in (first, second):
        with build_schedule_context(scheduled_execution_time=tick) as context:
            data = sched.evaluate_tick(context)
        (request,) = data.run_requests
        keys.append(request.tags[WINDOW_TAG])
        assert request.run_key == request.tags[WINDOW_TAG]
    assert keys == ["2026-04-04T15:30:00Z", "2026-04-04T16:30:00Z"]


def test_ticks_follow_sydney_wall_clock_across_dst_start():
    # 4 October 2026: 02:00 AEST jumps to 03:00 AEDT. A daily 08:00 job stays at 08:00 local.
    digest = inventory.get("notification-digest")
    before = next_tick(digest.cron, "Australia/Sydney", datetime(2026, 10, 2, 0, 0, tzinfo=UTC))
    after = next_tick(digest.cron, "Australia/Sydney", datetime(2026, 10, 4, 0, 0, tzinfo=UTC))
    assert (before.hour, after.hour) == (8, 8)
    assert before.astimezone(UTC).hour == 22 and after.astimezone(UTC).hour == 21
    # Every 15 minutes, the local 02:00-03:00 hour does not exist that night.
    expiry = inventory.get("share-link-expiry")
    tick = next_tick(expiry.cron, "Australia/Sydney", datetime(2026, 10, 3, 15, 50, tzinfo=UTC))
    assert tick.astimezone(SYDNEY).strftime("%H:%M %Z") == "03:00 AEDT"


@pytest.mark.parametrize("spec", inventory.INVENTORY, ids=lambda s: s.name)
def test_inventory_entries_are_complete(spec):
    assert spec.cron and spec.staging_cron and spec.sla_seconds > 0
    assert spec.max_runtime_seconds > spec.sla_seconds
    assert spec.escalate_to in ("reliability", "compliance", "admin")
    assert inventory.get(spec.dagster_name) is spec


def test_seed_retry_counts():
    expected = {
        "share-link-expiry": 1,
        "notification-digest": 3,
        "residency-report": 2,
        "analytics-rollup": 1,
        "notification-suppression-cleanup": 1,
    }
    for name, retries in expected.items():
        assert inventory.get(name).retries == retries


def test_unknown_job_lists_the_known_ones():
    with pytest.raises(inventory.UnknownJobError) as err:
        inventory.get("share-links")
    assert "share-link-expiry" in str(err.value) and "tenant-health-check" in str(err.value)


@pytest.mark.parametrize(
    ("env", "overrides", "limit"),
    [
        ("production", "", None),  # every 15 min; the inventory's 600 s already fits
        ("staging", "", "300"),  # every 5 min: stopped before the next tick
        ("staging", "share-link-expiry=* * * * *", "60"),  # never below its 60 s SLA
        ("production", "share-link-expiry=0 */2 * * *", None),  # hours apart
    ],
)
def test_scheduled_runs_stop_before_the_next_tick(env, overrides, limit):
    settings = Settings.from_env({"MM_ENV": env, "MM_SCHEDULE_OVERRIDES": overrides})
    with build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 28, 10, 15, tzinfo=SYDNEY)
    ) as context:
        (request,) = schedule(settings).evaluate_tick(context).run_requests
    assert request.tags.get("dagster/max_runtime") == limit


def test_minute_interval_takes_the_shortest_gap():
    from mm_orchestration.cron import minute_interval

    assert minute_interval("*/5 * * * *") == 300
    assert minute_interval("5,50 * * * *") == 15 * 60
    assert minute_interval("5 * * * *") == 3600
    assert minute_interval("0 8 * * *") is None
