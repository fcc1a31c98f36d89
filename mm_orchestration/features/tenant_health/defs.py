"""What the tenant health check declares: the daily asset, its job and schedule."""

import dagster as dg

from mm_orchestration.features.tenant_health.asset import (
    tenant_health_check,
    tenant_health_daily,
    tenant_health_schedule,
)
from mm_orchestration.monitoring.freshness import fresh_as_scheduled
from mm_orchestration.platform.scheduling import sized
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    job = sized(settings, "tenant-health-check", tenant_health_check)
    schedule = tenant_health_schedule(settings, job)
    # As fresh as its schedule keeps it: staleness alerts (monitoring/freshness.py).
    fresh = fresh_as_scheduled(tenant_health_daily, schedule, "tenant-health-check")
    return dg.Definitions(assets=[fresh], jobs=[job], schedules=[schedule])
