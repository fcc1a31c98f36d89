"""What share-link expiry declares: its job and schedule."""

import dagster as dg

from mm_orchestration.features.share_links.job import share_link_expiry
from mm_orchestration.platform.scheduling import scheduled_job
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    return scheduled_job(settings, "share-link-expiry", share_link_expiry)
