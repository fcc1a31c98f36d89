"""What the audit trail declares: the daily asset, its refresh job and schedule."""

import dagster as dg

from mm_orchestration.features.audit_trail.asset import (
    audit_trail,
    audit_trail_refresh,
    audit_trail_schedule,
)
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[audit_trail], jobs=[audit_trail_refresh], schedules=[audit_trail_schedule]
    )
