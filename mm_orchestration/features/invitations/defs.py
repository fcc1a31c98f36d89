"""What invite cleanup declares: its job and schedule."""

import dagster as dg

from mm_orchestration.features.invitations.job import invite_cleanup
from mm_orchestration.platform.scheduling import scheduled_job
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return scheduled_job(settings, "invite-cleanup", invite_cleanup)
