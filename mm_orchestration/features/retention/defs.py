"""What storage retention declares: its job and schedule."""

import dagster as dg

from mm_orchestration.features.retention.job import storage_retention
from mm_orchestration.platform.scheduling import scheduled_job
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return scheduled_job(settings, "storage-retention", storage_retention)
