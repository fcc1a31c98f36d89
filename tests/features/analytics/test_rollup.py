"""analytics_hourly: partitions, reruns and the reconciliation check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance, materialize

from mm_orchestration.features.analytics.asset import analytics_hourly, reconcile
from tests import factories as f

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

HOUR = "2026-11-28-10:00"
H = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def event(conn, tenant, kind, at, user=None):
    conn.execute(
        "INSERT INTO portal.events (tenant_id, user_id, event_type, occurred_at) "
        "VALUES (%s, %s, %s, %s)",
        [tenant, user, kind, at],
    )


def rollup(portal_db, partition=HOUR):
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [analytics_hourly],
            partition_key=partition,
            instance=instance,
            resources={"portal_db": portal_db},
            raise_on_error=False,
        )


def rows(conn):
    return conn.execute(
        "SELECT tenant_id, hour_start, event_type, event_count, unique_users "
        "FROM ops.analytics_hourly ORDER BY 1, 2, 3"
    ).fetchall()


@pytest.fixture
def events(conn):
    a, b = f.tenant(conn), f.tenant(conn)
    u1, u2 = f.user(conn, a), f.user(conn, a)
    event(conn, a, "asset.viewed", H, u1)  # exactly on the hour: in
    event(conn, a, "asset.viewed", H + timedelta(minutes=30), u1)
    event(conn, a, "asset.viewed", H + timedelta(minutes=59, seconds=59), u2)
    event(conn, a, "asset.viewed", H + timedelta(minutes=5))  # no user
    event(conn, a, "comment.added", H + timedelta(minutes=1), u2)
    event(conn, b, "asset.viewed", H + timedelta(minutes=2))
    event(conn, a, "asset.viewed", H + timedelta(hours=1), u1)  # next hour: out
    event(conn, a, "asset.viewed", H - timedelta(microseconds=1), u1)  # previous hour: out
    return a, b


def test_hour_rollup_counts_and_distinct_users(conn, portal_db, events):
    a, b = events
    result = rollup(portal_db)
    assert result.success
    expected = sorted(
        [(a, H, "asset.viewed", 4, 2), (a, H, "comment.added", 1, 1), (b, H, "asset.viewed", 1, 0)]
    )
    assert rows(conn) == expected
    (mat,) = result.asset_materializations_for_node("ops__analytics_hourly")
    assert mat.metadata["rows_written"].value == 3
    assert mat.metadata["events_counted"].value == 6
    assert mat.metadata["tenants_seen"].value == 2
    assert "| asset.viewed | 5 | 2 |" in mat.metadata["top_event_types"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.passed


def test_rerun_gives_identical_rows_and_late_events_are_picked_up(conn, portal_db, events):
    a, _ = events
    assert rollup(portal_db).success
    first = rows(conn)
    assert rollup(portal_db).success
    assert rows(conn) == first
    event(conn, a, "asset.viewed", H + timedelta(minutes=45))  # arrives late
    with conn.transaction():
        assert not reconcile(conn, H).passed
    assert rollup(portal_db).success
    assert sum(r[3] for r in rows(conn)) == sum(r[3] for r in first) + 1


def test_reconciliation_fails_loudly_when_counts_differ(conn, portal_db, events):
    assert rollup(portal_db).success
    conn.execute(
        "UPDATE ops.analytics_hourly SET event_count = event_count + 2 "
        "WHERE event_type = 'comment.added'"
    )
    check = reconcile(conn, H)
    assert not check.passed and check.severity.value == "ERROR"
    assert "rollup counts 8 events, portal.events has 6" in check.description


def test_schedule_rolls_up_the_last_hour_and_refreshes_the_one_before():
    from dagster import build_schedule_context

    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.platform.settings import Settings

    defs = build_definitions(Settings())
    sched = defs.resolve_schedule_def("analytics_rollup_schedule")
    with build_schedule_context(
        scheduled_execution_time=H + timedelta(minutes=5), repository_def=defs.get_repository_def()
    ) as context:
        requests = sched.evaluate_tick(context).run_requests
    assert [(r.partition_key, r.tags["mm/purpose"]) for r in requests] == [
        ("2026-11-28-09:00", "rollup"),
        ("2026-11-28-08:00", "refresh"),
    ]


# -- tenant health ---------------------------------------------------------------
