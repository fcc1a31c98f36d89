"""Freshness: the four assets people read declare how fresh their schedule keeps them, and
an asset past it alerts its owner once per episode (never materialised included)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import AssetKey, Definitions, asset, build_sensor_context, materialize

from mm_orchestration.definitions import build_definitions
from mm_orchestration.monitoring import episodes
from mm_orchestration.monitoring.freshness import (
    freshness_sensor,
    freshness_window,
    judge,
    with_freshness,
)
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.settings import Settings
from tests.monitoring.conftest import send

JUNE = datetime(2026, 6, 1, tzinfo=UTC)  # forty days without a daylight-saving change


@pytest.mark.parametrize(
    ("cron", "margin", "sla", "warn", "fail"),
    [
        ("5 * * * *", 300, 300, timedelta(minutes=65), timedelta(minutes=70)),  # the rollup
        ("0 6 * * *", 300, 600, timedelta(hours=24, minutes=7.5), timedelta(hours=24, minutes=15)),
        ("0 7 * * 1", 300, 900, timedelta(days=7, minutes=10), timedelta(days=7, minutes=20)),
        # A schedule ticking every minute (staging, a test): half its gap at most.
        ("* * * * *", 300, 300, timedelta(seconds=75), timedelta(seconds=90)),
    ],
)
def test_the_window_follows_the_schedule_that_refreshes_the_asset(cron, margin, sla, warn, fail):
    assert freshness_window(cron, "Australia/Sydney", margin, sla, JUNE) == (warn, fail)


def test_the_rollup_tenant_health_residency_and_dashboard_declare_freshness() -> None:
    graph = build_definitions(Settings(env="staging")).get_repository_def().asset_graph
    windows = {
        node.key.to_user_string(): node.freshness_policy.fail_window.to_timedelta()
        for node in graph.asset_nodes
        if node.freshness_policy is not None
    }
    assert set(windows) == {
        "ops/analytics_hourly",
        "ops/tenant_health_daily",
        "ops/residency_report",
        "ops/job_health",
    }
    # Staging's crons: the rollup every 15 minutes, tenant health and the report hourly.
    assert windows["ops/analytics_hourly"] == timedelta(minutes=22, seconds=30)
    assert windows["ops/tenant_health_daily"] == timedelta(minutes=75)
    assert windows["ops/job_health"] == timedelta(minutes=70)


@asset(key=AssetKey(["ops", "analytics_hourly"]))
def rollup_stand_in() -> None:
    """Has the rollup's key (so analytics-rollup owns it)."""


FRESH_ROLLUP = with_freshness(rollup_stand_in, "5 * * * *", "UTC", "analytics-rollup")


def evaluate(instance: Any, resources: dict[str, Any], cursor: str | None = None) -> Any:
    with build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=Definitions(assets=[FRESH_ROLLUP]),
        resources=resources,
    ) as context:
        result = freshness_sensor(context)
        return result, context.cursor


def test_a_rollup_left_unmaterialised_alerts_once(
    pg_instance, portal_db, alert_resources, conn, monkeypatch
) -> None:
    resources = {"portal_db": portal_db, "job_settings": JobSettings()}
    assert materialize([rollup_stand_in], instance=pg_instance).success
    start = datetime.now(UTC).timestamp()
    result, cursor = evaluate(pg_instance, resources)
    assert "stale: none" in str(result.skip_message)
    for minutes in (71, 75, 120):  # past its 70 minutes, and still
        monkeypatch.setattr(
            "mm_orchestration.monitoring.freshness.time.time", lambda m=minutes: start + 60 * m
        )
        result, cursor = evaluate(pg_instance, resources, cursor)
        send(pg_instance, alert_resources, getattr(result, "run_requests", None))
    (row,) = conn.execute(
        "SELECT recipient, payload->>'subject', payload->>'body' FROM ops.notification_outbox"
    ).fetchall()
    assert row[0] == "reliability@motionmavericks.com.au"
    assert row[1].startswith("ops/analytics_hourly is stale: last materialised ")
    assert "must be at most 70 minutes old" in row[2]
    assert "`mm-jobs run analytics-rollup`" in row[2]
    (action,) = conn.execute(
        "SELECT action FROM ops.audit_log WHERE job_name = 'analytics-rollup'"
    ).fetchone()
    assert action == "asset_stale_alert"


def test_an_asset_never_materialised_goes_stale_from_when_it_was_first_watched(
    pg_instance, portal_db, monkeypatch
) -> None:
    resources = {"portal_db": portal_db, "job_settings": JobSettings()}
    start = datetime.now(UTC).timestamp()
    result, cursor = evaluate(pg_instance, resources)  # first seen now
    assert "stale: none" in str(result.skip_message)
    monkeypatch.setattr("mm_orchestration.monitoring.freshness.time.time", lambda: start + 4300)
    result, _ = evaluate(pg_instance, resources, cursor)
    (request,) = result.run_requests
    subject = request.run_config["ops"]["record_alert"]["config"]["subject"]
    assert subject == "ops/analytics_hourly is stale: never materialised in 72 minutes"


def test_fresh_again_is_said_once_after_it_stayed_fresh(conn) -> None:
    key = AssetKey(["ops", "tenant_health_daily"])
    window = 24 * 3600 + 900.0
    t0 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert judge(conn, key, window, t0, t0, t0 + window + 60)  # stale: opens
    assert not judge(conn, key, window, t0 + window + 120, t0, t0 + window + 130)  # fresh
    assert episodes.current(conn, "freshness", "asset:ops/tenant_health_daily") is not None
    judge(conn, key, window, t0 + window + 120, t0, t0 + window + 130 + 901)  # 15 min fresh
    owed = episodes.unsent(conn, "freshness", datetime.fromtimestamp(t0 + window + 1100, UTC))
    assert [(e.contact, event) for e, event in owed] == [("admin", "opened"), ("admin", "closed")]
