"""What the analytics rollup declares: the hourly asset, its job and schedule."""

import dagster as dg

from mm_orchestration.features.analytics.asset import (
    analytics_hourly,
    analytics_rollup,
    analytics_schedule,
)
from mm_orchestration.monitoring.freshness import fresh_as_scheduled
from mm_orchestration.platform.scheduling import sized
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    job = sized(settings, "analytics-rollup", analytics_rollup)
    schedule = analytics_schedule(settings, job)
    # As fresh as its schedule keeps it: staleness alerts (monitoring/freshness.py).
    fresh = fresh_as_scheduled(analytics_hourly, schedule, "analytics-rollup")
    return dg.Definitions(assets=[fresh], jobs=[job], schedules=[schedule])
