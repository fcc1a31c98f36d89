"""What the analytics rollup declares: the hourly asset, its job and schedule."""

import dagster as dg

from mm_orchestration.features.analytics.asset import (
    analytics_hourly,
    analytics_rollup,
    analytics_schedule,
)
from mm_orchestration.platform.scheduling import sized
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    job = sized(settings, "analytics-rollup", analytics_rollup)
    return dg.Definitions(
        assets=[analytics_hourly], jobs=[job], schedules=[analytics_schedule(settings, job)]
    )
