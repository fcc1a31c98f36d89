"""What the tenant health check declares: the daily asset, its job and schedule."""

import dagster as dg

from mm_orchestration.features.tenant_health.asset import (
    tenant_health_check,
    tenant_health_daily,
    tenant_health_schedule,
)
from mm_orchestration.platform.scheduling import sized
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    job = sized(settings, "tenant-health-check", tenant_health_check)
    return dg.Definitions(
        assets=[tenant_health_daily], jobs=[job], schedules=[tenant_health_schedule(settings, job)]
    )
