"""What suppression cleanup declares: its job and schedule."""

import dagster as dg

from mm_orchestration.features.suppressions.job import notification_suppression_cleanup
from mm_orchestration.platform.scheduling import scheduled_job
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return scheduled_job(
        settings, "notification-suppression-cleanup", notification_suppression_cleanup
    )
