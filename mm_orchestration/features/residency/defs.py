"""What the residency report declares: the weekly asset, its job and schedule."""

import dagster as dg

from mm_orchestration.features.residency.asset import (
    residency_report,
    residency_report_job,
    residency_schedule,
)
from mm_orchestration.monitoring.freshness import fresh_as_scheduled
from mm_orchestration.platform.scheduling import sized
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    job = sized(settings, "residency-report", residency_report_job)
    schedule = residency_schedule(settings, job)
    # As fresh as its schedule keeps it: staleness alerts (monitoring/freshness.py).
    fresh = fresh_as_scheduled(residency_report, schedule, "residency-report")
    return dg.Definitions(assets=[fresh], jobs=[job], schedules=[schedule])
