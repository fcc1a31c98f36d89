"""The Dagster code location: every job, asset, schedule, sensor and resource, assembled.

Settings are read when Dagster loads the location (not at import), so a bad value
fails the load with the setting's name.
"""

from __future__ import annotations

import os

import dagster as dg

from mm_orchestration import inventory
from mm_orchestration.jobs.share_link_expiry import share_link_expiry
from mm_orchestration.resources import Mailer, PortalDatabase
from mm_orchestration.scheduling import inventory_schedule
from mm_orchestration.settings import Settings

# The operational jobs that are built, keyed by their inventory name.
JOBS = {
    "share-link-expiry": share_link_expiry,
}


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources bound to environment variables, so secrets never appear in the UI."""
    return {
        "portal_db": PortalDatabase(url=dg.EnvVar("DATABASE_URL")),
        "mailer": Mailer(
            api_key=dg.EnvVar("SENDGRID_API_KEY") if settings.sendgrid_api_key else None,
            api_host=settings.sendgrid_api_host,
            mail_from=settings.mail_from,
            mail_dir=os.path.join(settings.data_dir, "mail"),
        ),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    schedules = [
        inventory_schedule(inventory.get(name), job, settings) for name, job in JOBS.items()
    ]
    return dg.Definitions(
        jobs=list(JOBS.values()),
        schedules=schedules,
        resources=build_resources(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_env())
