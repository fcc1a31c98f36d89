"""What the audit trail declares: the daily asset (with its hash-chain check), its refresh
job and schedule, and the sensor that alerts compliance when the chain does not verify."""

import dagster as dg

from mm_orchestration.features.audit_trail.asset import (
    audit_chain_alerts,
    audit_trail,
    audit_trail_refresh,
    audit_trail_schedule,
)
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[audit_trail],
        jobs=[audit_trail_refresh],
        schedules=[audit_trail_schedule],
        sensors=[audit_chain_alerts],
    )
