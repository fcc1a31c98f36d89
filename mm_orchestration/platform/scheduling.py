"""Schedules, retry policies and run tags, generated from the job inventory."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetKey,
    Backoff,
    DagsterRun,
    DefaultScheduleStatus,
    Definitions,
    ExecutorDefinition,
    Jitter,
    JobDefinition,
    PartitionedConfig,
    RetryPolicy,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    job,
    multiprocess_executor,
    schedule,
)

from mm_orchestration.platform import inventory
from mm_orchestration.platform.cron import shortest_interval
from mm_orchestration.platform.inventory import JobSpec
from mm_orchestration.platform.ledger import TRIGGER_TAG, WINDOW_TAG
from mm_orchestration.platform.settings import Settings

JOB_TAG = "mm/job"
# Every job's default run config: the run's log through the location's `console` logger
# (monitoring.joblog.run_logger: JSON lines). Dagster uses a job's own logger only when
# the run config names it; as the job's default it applies to every run however launched
# (schedule, sensor, console, retry, `mm-jobs run`) and merges with the config a run gives.
RUN_LOGS: dict[str, Any] = {"loggers": {"console": {}}}


def spec_for_run(run: DagsterRun) -> JobSpec | None:
    """The inventory entry a Dagster run belongs to: its mm/job tag (or job name), else,
    for a materialisation launched from the asset graph, the job that owns its assets."""
    return spec_for(run.job_name, run.tags, run.asset_selection)


def spec_for(
    job_name: str, tags: Mapping[str, str], asset_selection: Iterable[AssetKey] | None
) -> JobSpec | None:
    """spec_for_run from a run's parts (a run's log knows its job, not its DagsterRun)."""
    try:
        return inventory.get(tags.get(JOB_TAG, job_name))
    except inventory.UnknownJobError:
        pass
    selected = {key.to_user_string() for key in asset_selection or ()}
    return next((spec for spec in inventory.INVENTORY if selected & set(spec.assets)), None)


def retry_policy(spec: JobSpec) -> RetryPolicy | None:
    """The seed's retry count, with exponential backoff and jitter."""
    if spec.retries <= 0:
        return None
    return RetryPolicy(
        max_retries=spec.retries,
        delay=spec.retry_delay_seconds,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


def job_tags(spec: JobSpec) -> dict[str, str]:
    """Tags every run of the job carries: its inventory name (the queue's per-job limit
    keys on it) and the hard runtime limit that run monitoring enforces."""
    return {JOB_TAG: spec.name, "dagster/max_runtime": str(spec.max_runtime_seconds)}


def pod_tags(spec: JobSpec) -> dict[str, str]:
    """The pod size the Kubernetes run launcher gives each run of the job (its
    `dagster-k8s/config` tag); only where that launcher is configured (MM_RUN_LAUNCHER=k8s),
    so that run lists elsewhere are not cluttered with it."""
    pod = spec.resources
    k8s = {
        "container_config": {
            "resources": {
                "requests": {"cpu": pod.cpu, "memory": pod.memory},
                "limits": {"memory": pod.memory_limit},
            }
        }
    }
    return {"dagster-k8s/config": json.dumps(k8s)}


def with_pod_tags(job: Any, spec: JobSpec) -> Any:
    """`job` again, its runs also tagged with the pod size (see pod_tags)."""
    tags = {**job.tags, **pod_tags(spec)}
    if isinstance(job, JobDefinition):
        return job.graph.to_job(
            name=job.name,
            description=job.description,
            tags=tags,
            executor_def=job.executor_def,
            config=RUN_LOGS,
        )
    return define_asset_job(
        job.name,
        selection=job.selection,
        config=job.config,
        description=job.description,
        tags=tags,
        executor_def=job.executor_def,
    )


def runtime_limit(spec: JobSpec, settings: Settings) -> dict[str, str]:
    """A scheduled run's hard limit when its schedule here (staging, an override) ticks
    more often than the inventory's limit allows: stopped before the next tick is due,
    though never before its SLA. Empty when the job's own limit already fits."""
    interval = shortest_interval(settings.cron_for(spec), settings.timezone)
    if interval >= spec.max_runtime_seconds:
        return {}
    return {"dagster/max_runtime": str(max(interval, spec.sla_seconds))}


WINDOW_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# An ISO 8601 instant that says its offset: a wall time alone would be a guess at the zone,
# and fromisoformat alone also takes dates, ISO weeks and compact forms.
_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})", re.ASCII
)


def window_key(scheduled_for: datetime) -> str:
    """A tick's window, in UTC so the repeated hour at the end of daylight saving
    still gives two different windows."""
    return scheduled_for.astimezone(UTC).strftime(WINDOW_FORMAT)


def tick_of(key: str) -> datetime:
    """The tick a `window_key` names (UTC); ValueError for any other text (its message
    never quotes `key`, which a run's tag or a person supplies)."""
    try:
        return datetime.strptime(key.strip(), WINDOW_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # strptime's message quotes the text
        raise ValueError("not a window key (a UTC tick like 2026-11-30T08:00:00Z)") from None


def parse_instant(value: str) -> datetime:
    """`2026-11-30T08:00:00+11:00` or `...Z` as an instant in UTC; ValueError for anything
    else (no offset, a date alone, an ISO week, a year the calendar cannot hold), its
    message never quoting `value`."""
    if not _INSTANT.fullmatch(value.strip()):
        raise ValueError("not an instant with its offset")
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("not a date and time the calendar has") from None


def inventory_schedule(
    spec: JobSpec,
    job: JobDefinition | Any,
    settings: Settings,
    should_run: Callable[[datetime], str | None] | None = None,
    window: Callable[[datetime], str] = window_key,
) -> ScheduleDefinition:
    """The schedule of `spec`, in the configured time zone, running from the start.

    `should_run(tick)` may return a reason to skip a tick (the first-business-day rule);
    `window(tick)` names the window a tick's run is responsible for (default: the tick).
    """
    limit = runtime_limit(spec, settings)

    @schedule(
        name=f"{spec.dagster_name}_schedule",
        job=job,
        cron_schedule=settings.cron_for(spec),
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"{spec.purpose}. {spec.failure_handling}.",
        tags={JOB_TAG: spec.name},
    )
    def _schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        tick = context.scheduled_execution_time
        assert tick is not None
        if should_run is not None:
            reason = should_run(tick)
            if reason:
                return SkipReason(reason)
        key = window(tick)
        return RunRequest(run_key=key, tags={WINDOW_TAG: key, TRIGGER_TAG: "schedule", **limit})

    return _schedule


def partitioned_schedule(
    spec: JobSpec,
    job: Any,
    settings: Settings,
    timezone: str,
    partitions: Callable[[datetime], list[tuple[str, str]]],
) -> ScheduleDefinition:
    """The schedule of a partitioned asset job: each tick requests the partitions that
    `partitions(tick)` names, as (partition key, purpose) pairs."""
    limit = runtime_limit(spec, settings)

    @schedule(
        name=f"{spec.dagster_name}_schedule",
        job=job,
        cron_schedule=settings.cron_for(spec),
        execution_timezone=timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"{spec.purpose}. {spec.failure_handling}.",
        tags={JOB_TAG: spec.name},
    )
    def _schedule(context: ScheduleEvaluationContext) -> list[RunRequest]:
        tick = context.scheduled_execution_time
        assert tick is not None
        return [
            RunRequest(
                run_key=f"{key}:{purpose}:{window_key(tick)}",
                partition_key=key,
                tags={TRIGGER_TAG: "schedule", "mm/purpose": purpose, **limit},
            )
            for key, purpose in partitions(tick)
        ]

    return _schedule


def executor_for(spec: JobSpec) -> ExecutorDefinition:
    """The executor the inventory chose for the job (see inventory.Executor)."""
    return in_process_executor if spec.executor == "in_process" else multiprocess_executor


def sized(settings: Settings, name: str, job: Any) -> Any:
    """`job` as this deployment launches it: on Kubernetes (MM_RUN_LAUNCHER=k8s) with the
    inventory's pod size as run tags; elsewhere unchanged."""
    return with_pod_tags(job, inventory.get(name)) if settings.run_launcher == "k8s" else job


def scheduled_job(
    settings: Settings,
    name: str,
    job: Any,
    should_run: Callable[[datetime], str | None] | None = None,
) -> Definitions:
    """What a feature declares for an operational job of the inventory: the job (sized for
    the run launcher) and its schedule, one run per tick keyed by the tick's window."""
    job = sized(settings, name, job)
    schedule_def = inventory_schedule(
        inventory.get(name), job, settings, window=window_key, should_run=should_run
    )
    return Definitions(jobs=[job], schedules=[schedule_def])


def inventory_job(spec: JobSpec, description: str | None) -> Callable[..., JobDefinition]:
    """The header every operational job shares: `@inventory_job(SPEC, __doc__)` names the
    job as the inventory does, tags it with its inventory name and uses its executor."""
    return job(
        name=spec.dagster_name,
        description=description,
        tags=job_tags(spec),
        executor_def=executor_for(spec),
        config=RUN_LOGS,
    )


def inventory_asset_job(spec: JobSpec, asset: Any, description: str) -> Any:
    """The job of an inventory asset (a partitioned asset run on the inventory's schedule),
    named, tagged and executed as the inventory says, as `inventory_job` does for ops."""
    return define_asset_job(
        spec.dagster_name,
        selection=[asset],
        tags=job_tags(spec),
        executor_def=executor_for(spec),
        description=description,
        config=run_logs_for(asset),
    )


def run_logs_for(asset: Any) -> Any:
    """RUN_LOGS as the default config of a job of `asset`: for a partitioned asset, every
    partition's run config (Dagster builds a partition's run from its partitioned config,
    which replaces a job's plain default)."""
    partitions = getattr(asset, "partitions_def", None)
    if partitions is None:
        return RUN_LOGS
    return PartitionedConfig(
        partitions_def=partitions, run_config_for_partition_key_fn=lambda _key: RUN_LOGS
    )
