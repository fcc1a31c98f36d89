"""What the residency report declares: the weekly asset, its job and schedule."""

import dagster as dg

from mm_orchestration.features.residency.asset import (
    residency_report,
    residency_report_job,
    residency_schedule,
)
from mm_orchestration.platform.scheduling import sized
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    job = sized(settings, "residency-report", residency_report_job)
    return dg.Definitions(
        assets=[residency_report], jobs=[job], schedules=[residency_schedule(settings, job)]
    )
