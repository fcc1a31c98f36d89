"""What run config a person may send with a run: values, never a way to read the system.

Dagster resolves `{env: NAME}` in every string and number field of a run's config (each
`StringSource`/`IntSource` field, every field of a Pythonic `Config`), in the run's own
process: whoever can launch a run could have it read any environment variable (the
database password, the SendGrid key) and show it back in a failure message, a log line or
a stored row. So a run config from a person (the console, GraphQL, `mm-jobs`) carries
plain values only: the resources are the deployment's (their configured values, secrets
from the environment, are applied as defined; a `resources` block sent back by the
Launchpad is dropped), and a config that still asks Dagster to read the environment is
refused, naming where. Only admins may set the executor's or loggers' config.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dagster import DagsterRun, QueuedRunCoordinator, SubmitRunContext

from mm_orchestration.platform.scheduling import RUN_LOGS

# Top-level blocks a person's run config may hold: each op's (and asset's) own config.
PERSON_BLOCKS = frozenset({"ops"})
# The deployment's blocks: an admin may tune the executor and loggers of one run.
ADMIN_BLOCKS = frozenset({"ops", "execution", "loggers"})
# Applied as the definitions give them, whoever sends a run: dropped from the request.
DEPLOYMENT_BLOCKS = frozenset({"resources"})


class RunConfigRefused(ValueError):
    """A person's run config that may not run: the message says where and why, never a
    value."""


def environment_reads(config: Any, path: str = "") -> Iterator[str]:
    """The paths (`ops.queue_due_digests.config.tenant_id`) where `config` asks Dagster to
    read an environment variable: a mapping whose one key is `env`, as Dagster reads a
    source field."""
    if isinstance(config, dict):
        if len(config) == 1 and "env" in config:
            yield path or "(the whole config)"
            return
        for key, value in config.items():
            yield from environment_reads(value, f"{path}.{key}" if path else str(key))
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from environment_reads(value, f"{path}[{i}]")


def for_person(config: dict[str, Any], admin: bool) -> dict[str, Any]:
    """`config` as it may run for a person: the deployment's blocks dropped; raises
    RunConfigRefused for a block the person may not set or a read of the environment."""
    kept = {k: v for k, v in config.items() if k not in DEPLOYMENT_BLOCKS}
    allowed = ADMIN_BLOCKS if admin else PERSON_BLOCKS
    # The jobs' default logs block (scheduling.RUN_LOGS), which the Launchpad shows filled
    # in, is anyone's to send back unchanged; choosing other loggers is an admin's.
    extra = sorted(
        str(k)
        for k in kept
        if k not in allowed and not (k == "loggers" and kept[k] == RUN_LOGS["loggers"])
    )
    if extra:
        raise RunConfigRefused(
            f"the run config sets {', '.join(extra)}, which "
            + ("is not part of a run's config" if admin else "only an admin may set")
            + f"; a run takes {' and '.join(sorted(allowed))} (each op's config)"
        )
    refuse_environment_reads(kept)
    # The run's log as JSON lines (scheduling.RUN_LOGS), for the jobs whose required op
    # config leaves them no default of their own (the DLQ tools); an admin's choice stays.
    return {**RUN_LOGS, **kept}


def refuse_environment_reads(config: Any) -> None:
    """RunConfigRefused naming where `config` asks Dagster to read the environment (a run
    of any origin: the console, `mm-jobs`, the run coordinator for every other door)."""
    reads = list(environment_reads(config))
    if reads:
        raise RunConfigRefused(
            "the run config asks Dagster to read an environment variable ({env: ...}) at "
            + ", ".join(reads[:5])
            + ("..." if len(reads) > 5 else "")
            + ": a run's config carries plain values only; write the value itself"
        )


# A run the coordinator refused carries its own run id under this tag (a re-execution of
# it inherits its tags, and is no refusal: monitoring/attempts.py).
REFUSED_TAG = "mm/refused"
# Dagster's (dagster._core.storage.tags): how many times run retries may retry this run.
MAX_RETRIES_TAG = "dagster/max_retries"


class PlainValuesRunCoordinator(QueuedRunCoordinator):
    """Dagster's queued run coordinator, refusing a run whose config reads the environment,
    or a run of a partitioned job that names none of its partitions (platform/partitions.py),
    whichever door it came through (a webserver other than the console, `dagster job
    launch`, a GraphQL client): the run is failed before it is queued, with the reason in
    its log, and never starts. It would be refused again, so it is not retried (run retries
    read `dagster/max_retries: 0`), and it is tagged `mm/refused`: a person's refused
    request is theirs to read in the run list, not an alert (monitoring/attempts.py).
    Configured in dagster.yaml like the class it extends."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        try:
            refuse_environment_reads(run.run_config)
            problem = partition_problem(run, context.workspace)
        except RunConfigRefused as exc:
            problem = str(exc)
        if problem:
            # Tagged before it fails: Dagster decides whether to retry a run as it stores
            # the failure, from the run's tags then.
            self._instance.add_run_tags(run.run_id, {MAX_RETRIES_TAG: "0", REFUSED_TAG: run.run_id})
            tagged = self._instance.get_run_by_id(run.run_id) or run
            self._instance.report_run_failed(tagged, f"refused before it was queued: {problem}")
            refused = self._instance.get_run_by_id(run.run_id)
            assert refused is not None
            return refused
        return super().submit_run(context)


def partition_problem(run: DagsterRun, workspace: Any) -> str | None:
    """Why `run` may not run (None: it may): it names no partition of its partitioned job,
    or one the job does not have (a run without a partition fails in its first step; one
    for a week to come writes a report of nothing). Judged from `workspace`'s snapshot of
    the job; a run the workspace cannot place is left to Dagster."""
    from mm_orchestration.platform.partitions import partitions_in, run_problem

    if workspace is None:
        return None
    origin = run.remote_job_origin
    location = origin.location_name if origin is not None else None
    repository = origin.repository_origin.repository_name if origin is not None else None
    assets = sorted(run.asset_selection or [], key=lambda key: key.to_user_string())
    found = partitions_in(workspace, run.job_name, assets, location, repository)
    if not found or len(found) > 1:
        # Unpartitioned (a stray partition tag harms no such run), unknown, or assets
        # partitioned differently: Dagster's to answer.
        return None
    name = ",".join(k.to_user_string() for k in assets) if assets else run.job_name
    return run_problem(name, found[0], run.tags)
