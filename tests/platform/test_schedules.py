"""Schedules generated from the inventory: Sydney time, DST, staging intervals, and
what `mm-jobs list` and the descriptions tell operators about them."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from dagster import ScheduleDefinition, build_schedule_context

from mm_orchestration.cli import jobs as cli
from mm_orchestration.definitions import build_definitions
from mm_orchestration.platform import inventory
from mm_orchestration.platform.cron import next_tick
from mm_orchestration.platform.ledger import WINDOW_TAG
from mm_orchestration.platform.settings import Settings

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
    drill = "0 8 * * *"
    before = next_tick(drill, "Australia/Sydney", datetime(2026, 10, 2, 0, 0, tzinfo=UTC))
    after = next_tick(drill, "Australia/Sydney", datetime(2026, 10, 4, 0, 0, tzinfo=UTC))
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


def _list(monkeypatch, capsys, now: datetime, **env: str) -> dict[str, list[str]]:
    """`mm-jobs list` at `now` with `env`: {job: [cron, zone, retries, sla, next tick, built,
    error-rate alert]}."""
    for name in ("MM_ENV", "MM_TIMEZONE", "MM_SCHEDULE_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/portal")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.cmd_list(argparse.Namespace(), now=now) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", header)[1:3] == ["schedule", "timezone"]
    rows = [re.split(r"\s{2,}", line) for line in lines]
    return {row[0]: row[1:] for row in rows}


def test_list_next_tick_is_dagsters_across_dst_start(monkeypatch, capsys):
    # 4 October 2026: Sydney skips 02:00-03:00. Dagster runs `30 2 * * *` at 03:00 AEDT
    # that night (not on the 5th, as a hand-made cron reading said).
    now = datetime(2026, 10, 3, 12, 0, tzinfo=SYDNEY)
    rows = _list(monkeypatch, capsys, now, MM_SCHEDULE_OVERRIDES="invite-cleanup=30 2 * * *")
    for job in ("invite-cleanup", "storage-retention"):
        cron, zone, *_, tick, _built, _rate = rows[job]
        assert (cron, zone, tick) == ("30 2 * * *", "Australia/Sydney", "2026-10-04 03:00 AEDT")
    assert next_tick("30 2 * * *", "Australia/Sydney", now) == datetime(
        2026, 10, 4, 3, 0, tzinfo=SYDNEY
    )


def test_list_next_tick_is_after_now_like_the_daemon(monkeypatch, capsys):
    # A tick exactly at `now` is already due: the next one is listed.
    now = datetime(2026, 11, 28, 10, 15, tzinfo=SYDNEY)
    rows = _list(monkeypatch, capsys, now)
    assert rows["share-link-expiry"][4] == "2026-11-28 10:30 AEDT"


@pytest.mark.parametrize("env", ["production", "staging"])
def test_list_shows_the_built_schedules_cron_and_zone(monkeypatch, capsys, env):
    # Perth for MM_TIMEZONE: the partitioned residency and tenant-health schedules keep
    # Sydney, and the list must say so.
    now = datetime(2026, 4, 5, 1, 0, tzinfo=SYDNEY)  # the night Sydney repeats 02:00-03:00
    rows = _list(monkeypatch, capsys, now, MM_ENV=env, MM_TIMEZONE="Australia/Perth")
    settings = Settings(env=env, timezone="Australia/Perth")
    built = {
        s.tags.get("mm/job"): s
        for s in build_definitions(settings).schedules or []
        if isinstance(s, ScheduleDefinition)
    }
    assert set(rows) == {spec.name for spec in inventory.INVENTORY} == set(built) - {None}
    zones = set()
    for job, (cron, zone, _retries, _sla, tick, _built, _rate) in rows.items():
        sched = built[job]
        assert (cron, zone) == (sched.cron_schedule, sched.execution_timezone)
        expected = next_tick(sched.cron_schedule, sched.execution_timezone, now)
        assert tick == expected.strftime("%Y-%m-%d %H:%M %Z")
        zones.add(zone)
    assert zones == {"Australia/Perth", "Australia/Sydney"}
    assert rows["residency-report"][1] == rows["tenant-health-check"][1] == "Australia/Sydney"
    assert rows["analytics-rollup"][1] == "Australia/Perth"


_RETRIES = {0: "No", 1: "Retries once", 2: "Retries 2 times", 3: "Retries 3 times"}
_CONTACT = {
    "reliability": "alerts the reliability partner",
    "compliance": "alerts compliance",
    "admin": "alerts the Admin",
}


@pytest.mark.parametrize("spec", inventory.INVENTORY, ids=lambda s: s.name)
def test_failure_handling_says_what_the_code_does(spec):
    # Retries come from spec.retries (retry_policy); a failed run alerts spec.escalate_to
    # through job_failure_sensor. The text shown in the UI and in alerts must agree.
    text = spec.failure_handling
    assert text.startswith(_RETRIES[spec.retries]), text
    assert _CONTACT[spec.escalate_to] in text, text
    assert "DLQ" not in text or spec.name == "mux-webhook-retry"  # only Mux has a DLQ
    description = schedule(Settings(), f"{spec.dagster_name}_schedule").description
    assert description == f"{spec.purpose}. {text}."


def test_shortest_interval_is_measured_on_dagsters_ticks():
    from mm_orchestration.platform.cron import shortest_interval

    after = datetime(2026, 11, 28, 10, 0, tzinfo=SYDNEY)
    assert shortest_interval("*/5 * * * *", "Australia/Sydney", after) == 300
    assert shortest_interval("5,50 * * * *", "Australia/Sydney", after) == 15 * 60
    assert shortest_interval("5 * * * *", "Australia/Sydney", after) == 3600
    assert shortest_interval("0 8 * * *", "Australia/Sydney", after) == 86400
    # Restricted hours: the gap inside the window is what a run must fit in.
    assert shortest_interval("*/5 9-17 * * 1-5", "Australia/Sydney", after) == 300
