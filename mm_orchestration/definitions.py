"""The Dagster code location: what each feature declares, merged, with the shared resources.

Each folder of `features/` with a `defs.py` declares its own jobs, assets, schedules,
sensors and the resources only it uses (`defs(settings) -> Definitions`); monitoring does
the same. They are merged here with Dagster's `Definitions.merge`, so a new job is a new
folder and a row of the inventory. Settings are read when Dagster loads the location (not
at import), so a bad value fails the load with the setting's name.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import warnings

import dagster as dg

from mm_orchestration import features
from mm_orchestration.platform import inventory
from mm_orchestration.platform.settings import Settings

# Dagster itself passes `owners` (a beta parameter) when it binds resources to the jobs a
# sensor requests (ours: send_alert), so every process would warn about a parameter we
# never use. Only that warning is silenced.
warnings.filterwarnings(
    "ignore", message="Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning
)


def feature_names() -> list[str]:
    """The folders of `features/` that declare definitions, in name order."""
    return sorted(
        module.name
        for module in pkgutil.iter_modules(features.__path__)
        if module.ispkg and importlib.util.find_spec(f"{features.__name__}.{module.name}.defs")
    )


def shared_resources(settings: Settings) -> dict[str, object]:
    """The resources more than one feature uses, bound to environment variables so that
    secrets never appear in the UI."""
    from mm_orchestration.monitoring.resource import Monitoring
    from mm_orchestration.platform.database import PortalDatabase
    from mm_orchestration.platform.job_settings import JobSettings
    from mm_orchestration.platform.outbox.mailer import Mailer
    from mm_orchestration.platform.report_store import ReportStore

    return {
        # Dagster's default, named so that it does not warn (the default `fs_io_manager` is
        # superseded): step outputs under DAGSTER_HOME/storage, so a failed step can be
        # re-executed alone.
        "io_manager": dg.FilesystemIOManager(),
        "portal_db": PortalDatabase(
            url=dg.EnvVar("DATABASE_URL"),
            direct_url=(dg.EnvVar("DATABASE_DIRECT_URL") if settings.database_direct_url else None),
        ),
        "job_settings": JobSettings.from_settings(settings),
        "monitoring": Monitoring(
            dsn=dg.EnvVar("SENTRY_DSN") if settings.sentry_dsn else None,
            environment=settings.env,
            timezone=settings.timezone,
            crons={spec.name: settings.cron_for(spec) for spec in inventory.INVENTORY},
            http_connect_timeout=settings.http_connect_timeout,
            http_read_timeout=settings.http_read_timeout,
        ),
        "report_store": ReportStore.from_settings(settings),
        "mailer": Mailer(
            api_key=dg.EnvVar("SENDGRID_API_KEY") if settings.sendgrid_api_key else None,
            api_host=settings.sendgrid_api_host,
            mail_from=settings.mail_from,
            mail_dir=os.path.join(settings.data_dir, "mail"),
            connect_timeout_seconds=settings.http_connect_timeout,
            read_timeout_seconds=settings.http_read_timeout,
        ),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every feature's definitions and monitoring's, merged, with the shared resources."""
    from mm_orchestration.monitoring import defs as monitoring
    from mm_orchestration.monitoring.joblog import run_logger

    parts = [
        importlib.import_module(f"{features.__name__}.{name}.defs").defs(settings)
        for name in feature_names()
    ]
    return dg.Definitions.merge(
        *parts,
        monitoring.defs(settings),
        dg.Definitions(
            resources=shared_resources(settings),
            # Every job's console log as JSON lines (monitoring/joblog.py), not Dagster's text.
            loggers={"console": run_logger},
            # The support jobs (alerts, DLQ tools, the dashboard) are single short steps:
            # run them in the run's own process. Inventory jobs name theirs in the inventory.
            executor=dg.in_process_executor,
        ),
    )


def build_resources(settings: Settings) -> dict[str, object]:
    """Every resource the location binds (the shared ones and each feature's own)."""
    return dict(build_definitions(settings).resources or {})


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_env())
