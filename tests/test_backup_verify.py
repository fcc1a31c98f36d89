"""backup-verify: the first business day, and a real pg_dump / pg_restore drill."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from dagster import build_schedule_context

from mm_orchestration.db import connect
from mm_orchestration.demo_data import seed_demo
from mm_orchestration.jobs.backup_verify import (
    DrillFailed,
    backup_verify,
    first_business_day,
    is_business_day,
    run_local_drill,
)
from mm_orchestration.resources.restore_drill import RestoreDrill
from tests.conftest import run_job

SYDNEY = ZoneInfo("Australia/Sydney")


@pytest.mark.parametrize(
    ("year", "month", "expected"),
    [
        (2026, 1, date(2026, 1, 2)),  # 1 January is a holiday
        (2027, 1, date(2027, 1, 4)),  # 1 January (Fri) a holiday, then the weekend
        (2026, 2, date(2026, 2, 2)),  # starts on a Sunday
        (2026, 8, date(2026, 8, 3)),  # starts on a Saturday
        (2026, 12, date(2026, 12, 1)),
    ],
)
def test_first_business_day(year, month, expected):
    assert first_business_day(year, month) == expected


def test_first_business_day_over_two_years():
    for year in (2026, 2027):
        for month in range(1, 13):
            first = first_business_day(year, month)
            assert is_business_day(first)
            assert all(not is_business_day(date(year, month, d)) for d in range(1, first.day))


def test_schedule_runs_only_on_the_first_business_day():
    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.settings import Settings

    sched = build_definitions(Settings()).resolve_schedule_def("backup_verify_schedule")
    assert sched.cron_schedule == "0 9 1-7 * *"
    outcomes = {}
    for day in (1, 2, 3, 4, 5):
        tick = datetime(2027, 1, day, 9, 0, tzinfo=SYDNEY)
        with build_schedule_context(scheduled_execution_time=tick) as context:
            data = sched.evaluate_tick(context)
        outcomes[day] = bool(data.run_requests)
    assert outcomes == {1: False, 2: False, 3: False, 4: True, 5: False}


@pytest.fixture
def seeded(database_url):
    with connect(database_url) as conn:
        seed_demo(conn)
    return database_url


def scratch_databases(url):
    with connect(url) as conn:
        return conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'mm_drill_%'"
        ).fetchall()


def test_drill_succeeds_on_a_healthy_database(seeded):
    evidence = run_local_drill(seeded, RestoreDrill())
    checks = evidence["checks"]
    assert checks["row_counts"]["passed"] and checks["row_counts"]["tables"] >= 20
    assert checks["key_table_checksums"]["passed"] and checks["migration_version"]["passed"]
    assert set(checks["smoke_queries"]) >= {"portal.tenants", "portal.share_links"}
    assert evidence["rto_seconds"] > 0 and evidence["rpo_seconds"] is not None
    assert scratch_databases(seeded) == []


def test_drill_fails_with_a_named_check_when_the_copy_differs(seeded):
    def tamper(scratch_url):
        with connect(scratch_url) as conn:
            conn.execute(
                "DELETE FROM portal.share_link_tokens WHERE id IN "
                "(SELECT id FROM portal.share_link_tokens LIMIT 1)"
            )
            conn.execute("UPDATE portal.tenants SET name = name || ' (changed)'")

    with pytest.raises(DrillFailed) as err:
        run_local_drill(seeded, RestoreDrill(), after_restore=tamper)
    message = str(err.value)
    assert "row_counts" in message and "portal.share_link_tokens" in message
    assert "key_table_checksums" in message and "portal.tenants" in message
    assert scratch_databases(seeded) == []


def test_job_records_the_drill(seeded, portal_db, job_settings, conn):
    result = run_job(
        backup_verify,
        {"portal_db": portal_db, "restore_drill": RestoreDrill(), "job_settings": job_settings},
    )
    assert result.success
    status, method, checks = conn.execute(
        "SELECT status, method, checks FROM ops.backup_drills"
    ).fetchone()
    assert (status, method) == ("succeeded", "local")
    assert checks["checks"]["row_counts"]["passed"]


def test_failed_drill_fails_the_run_and_names_compliance(seeded, portal_db, job_settings, conn):
    broken = RestoreDrill(pg_bin_dir="/nonexistent")
    result = run_job(
        backup_verify,
        {"portal_db": portal_db, "restore_drill": broken, "job_settings": job_settings},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message
    assert "compliance@motionmavericks.com.au" in message
    status, error = conn.execute("SELECT status, error FROM ops.backup_drills").fetchone()
    assert status == "failed" and "pg_dump" in error
