"""The Dagster code location: what each feature declares, merged, with the shared resources.

Each folder of `features/` with a `defs.py` declares its own jobs, assets, schedules,
sensors and the resources only it uses (`defs(settings) -> Definitions`); monitoring does
the same. They are merged here with Dagster's `Definitions.merge`, so a new job is a new
folder and a row of the inventory. Settings are read when Dagster loads the location (not
at import), so a bad value fails the load with the setting's name.

The merge is built when first asked for (`LocationData`): a run worker asks only for its
own job, and an operational job of the inventory is then built from its own folder and
the shared parts alone, so a run imports what its job uses (issue 25).
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME

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


def feature_definitions(settings: Settings, name: str) -> dg.Definitions:
    """What the folder `features/<name>` declares."""
    return importlib.import_module(f"{features.__name__}.{name}.defs").defs(settings)


def common_definitions(settings: Settings) -> dg.Definitions:
    """What every job of the location shares: the resources, the logger and the default
    executor."""
    from mm_orchestration.monitoring.joblog import run_logger

    return dg.Definitions(
        resources=shared_resources(settings),
        # Every job's console log as JSON lines (monitoring/joblog.py), not Dagster's text.
        loggers={"console": run_logger},
        # The support jobs (alerts, DLQ tools, the dashboard) are single short steps:
        # run them in the run's own process. Inventory jobs name theirs in the inventory.
        executor=dg.in_process_executor,
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every feature's definitions and monitoring's, merged, with the shared resources."""
    from mm_orchestration.monitoring import defs as monitoring

    return dg.Definitions.merge(
        *(feature_definitions(settings, name) for name in feature_names()),
        monitoring.defs(settings),
        common_definitions(settings),
    )


def build_job_alone(settings: Settings, job_name: str) -> dg.JobDefinition | None:
    """An operational (op) job of the inventory, built from its feature's folder and the
    common definitions only; None for any other job (an asset job's graph spans folders).
    Bound as in the whole location: the same job, tags, executor, logger and resources
    (tests/platform/test_light_location.py compares them)."""
    spec = inventory.find(job_name)
    if spec is None or spec.kind != "op" or not spec.feature:
        return None
    alone = dg.Definitions.merge(
        feature_definitions(settings, spec.feature), common_definitions(settings)
    )
    return alone.get_repository_def().get_job(job_name)


class LocationData(dg.RepositoryData):
    """The location's definitions, built on first use. Asked for one operational job
    before anything else (what a run worker asks, `ReconstructableJob.get_definition`),
    it builds that job's folder alone: about 0.1 CPU-s and some 100 modules less per run
    (benchmarks/location_load.py). Anything else (the code server's snapshot, the
    console, sensors, asset jobs) builds every folder's, once."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._alone: dict[str, dg.JobDefinition] = {}

    @functools.cached_property
    def _every(self) -> dg.RepositoryData:
        repository = build_definitions(self._settings).get_repository_def()
        # No public accessor; tests/console/test_dagster_private.py checks it is there.
        return repository._repository_data

    def get_job(self, job_name: str) -> dg.JobDefinition:
        if "_every" not in self.__dict__:
            if job_name not in self._alone:
                job = build_job_alone(self._settings, job_name)
                if job is not None:
                    self._alone[job_name] = job
            if job_name in self._alone:
                return self._alone[job_name]
        return self._every.get_job(job_name)

    def has_job(self, job_name: str) -> bool:
        return job_name in self._alone or self._every.has_job(job_name)

    def get_top_level_resources(self) -> Mapping[str, Any]:
        return self._every.get_top_level_resources()

    def get_env_vars_by_top_level_resource(self) -> Mapping[str, Any]:
        return self._every.get_env_vars_by_top_level_resource()

    def get_all_jobs(self) -> Sequence[dg.JobDefinition]:
        return self._every.get_all_jobs()

    def get_job_names(self) -> Sequence[str]:
        return self._every.get_job_names()

    def get_schedule_names(self) -> Sequence[str]:
        return self._every.get_schedule_names()

    def get_all_schedules(self) -> Sequence[dg.ScheduleDefinition]:
        return self._every.get_all_schedules()

    def get_schedule(self, schedule_name: str) -> dg.ScheduleDefinition:
        return self._every.get_schedule(schedule_name)

    def has_schedule(self, schedule_name: str) -> bool:
        return self._every.has_schedule(schedule_name)

    def get_all_sensors(self) -> Sequence[dg.SensorDefinition]:
        return self._every.get_all_sensors()

    def get_sensor_names(self) -> Sequence[str]:
        return self._every.get_sensor_names()

    def get_sensor(self, sensor_name: str) -> dg.SensorDefinition:
        return self._every.get_sensor(sensor_name)

    def has_sensor(self, sensor_name: str) -> bool:
        return self._every.has_sensor(sensor_name)

    def get_source_assets_by_key(self) -> Mapping[dg.AssetKey, dg.SourceAsset]:
        return self._every.get_source_assets_by_key()

    def get_assets_defs_by_key(self) -> Mapping[dg.AssetKey, dg.AssetsDefinition]:
        return self._every.get_assets_defs_by_key()

    def get_asset_checks_defs_by_key(self) -> Mapping[Any, Any]:
        return self._every.get_asset_checks_defs_by_key()

    def get_component_tree(self) -> Any:
        return self._every.get_component_tree()

    def get_asset_job_nodes(self) -> Any:
        return self._every.get_asset_job_nodes()

    def load_all_definitions(self) -> None:
        self._every.load_all_definitions()


def build_resources(settings: Settings) -> dict[str, object]:
    """Every resource the location binds (the shared ones and each feature's own)."""
    return dict(build_definitions(settings).resources or {})


# Dagster's loader takes a RepositoryDefinition from a `@definitions` function (its
# LazyDefinitions says so); only the decorator's annotation names Definitions alone.
@dg.definitions  # type: ignore[arg-type]
def defs() -> dg.RepositoryDefinition:
    """The location as Dagster loads it (the settings read now: a bad one fails the load
    naming it); its definitions are built when first asked for."""
    return dg.RepositoryDefinition(
        SINGLETON_REPOSITORY_NAME, repository_data=LocationData(Settings.from_env())
    )
