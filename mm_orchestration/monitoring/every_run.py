"""Run-status sensors that watch every run of the instance, whatever started it.

Dagster's run-status sensors see only runs launched from their own code location unless
told otherwise, and a run made by `mm-jobs run` (execute_in_process) has no location at
all: without this, a CLI run that fails twice would alert nobody. Each of our sensors then
keeps to the inventory's jobs itself (`scheduling.spec_for_run`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    SensorDefinition,
    run_status_sensor,
)


def every_run_sensor(
    name: str,
    run_status: DagsterRunStatus,
    request_job: JobDefinition | None = None,
    minimum_interval_seconds: int | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], SensorDefinition]:
    """`@run_status_sensor` for runs of every origin (console, GraphQL, CLI, schedule,
    sensor, backfill), running from the start."""
    return run_status_sensor(
        name=name,
        run_status=run_status,
        request_job=request_job,
        minimum_interval_seconds=minimum_interval_seconds,
        description=description,
        default_status=DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=True,
    )
