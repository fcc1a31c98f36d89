"""What the notification digest declares: its job and schedule."""

import dagster as dg

from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.platform.scheduling import scheduled_job
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return scheduled_job(settings, "notification-digest", notification_digest)
