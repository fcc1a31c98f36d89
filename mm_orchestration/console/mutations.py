"""Every GraphQL mutation of the pinned Dagster, classified: the audit's action name and
who may perform it.

The list is checked against Dagster's own schema by a test (tests/console/test_console_front.py),
so an upgrade that adds a mutation fails the suite until it is classified here; at run
time an unclassified mutation is refused to everyone (and the refusal audited).

Rules:
- `launch`: a new run of a job (or of assets). Operators may launch the seed's manual jobs
  and the DLQ tools (policy.OPERATOR_JOBS / OPERATOR_ASSETS); anything else is admin's.
- `reexecute`: a new run from an earlier one; the earlier run's job decides, as for launch.
- `operator`: operators and admins (reloading code changes nothing the jobs do).
- `admin`: admins only.
- `free`: changes nothing of the business (the UI's own bookkeeping); any role, audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Rule = Literal["launch", "reexecute", "operator", "admin", "free"]


@dataclass(frozen=True)
class Mutation:
    action: str  # ops.audit_log.action
    rule: Rule


MUTATIONS: dict[str, Mutation] = {
    # Runs
    "launchPipelineExecution": Mutation("launch_run", "launch"),
    "launchRun": Mutation("launch_run", "launch"),
    "launchMultipleRuns": Mutation("launch_run", "launch"),
    "launchPipelineReexecution": Mutation("reexecute_run", "reexecute"),
    "launchRunReexecution": Mutation("reexecute_run", "reexecute"),
    "terminatePipelineExecution": Mutation("terminate_run", "admin"),
    "terminateRun": Mutation("terminate_run", "admin"),
    "terminateRuns": Mutation("terminate_run", "admin"),
    "deletePipelineRun": Mutation("delete_run", "admin"),
    "deleteRun": Mutation("delete_run", "admin"),
    # Schedules and sensors (a dry run executes the definition's code: admin's)
    "startSchedule": Mutation("start_schedule", "admin"),
    "stopRunningSchedule": Mutation("stop_schedule", "admin"),
    "resetSchedule": Mutation("reset_schedule", "admin"),
    "scheduleDryRun": Mutation("schedule_dry_run", "admin"),
    "startSensor": Mutation("start_sensor", "admin"),
    "stopSensor": Mutation("stop_sensor", "admin"),
    "resetSensor": Mutation("reset_sensor", "admin"),
    "setSensorCursor": Mutation("set_sensor_cursor", "admin"),
    "sensorDryRun": Mutation("sensor_dry_run", "admin"),
    # Backfills
    "launchPartitionBackfill": Mutation("launch_backfill", "admin"),
    "resumePartitionBackfill": Mutation("resume_backfill", "admin"),
    "reexecutePartitionBackfill": Mutation("reexecute_backfill", "admin"),
    "cancelPartitionBackfill": Mutation("cancel_backfill", "admin"),
    # Assets and partitions
    "wipeAssets": Mutation("wipe_assets", "admin"),
    "reportRunlessAssetEvents": Mutation("report_asset_events", "admin"),
    "reportAssetCheckEvaluations": Mutation("report_asset_check", "admin"),
    "addDynamicPartition": Mutation("add_dynamic_partition", "admin"),
    "deleteDynamicPartitions": Mutation("delete_dynamic_partitions", "admin"),
    "setAutoMaterializePaused": Mutation("set_auto_materialize_paused", "admin"),
    # Concurrency
    "setConcurrencyLimit": Mutation("set_concurrency_limit", "admin"),
    "deleteConcurrencyLimit": Mutation("delete_concurrency_limit", "admin"),
    "freeConcurrencySlotsForRun": Mutation("free_concurrency_slots", "admin"),
    "freeConcurrencySlots": Mutation("free_concurrency_slots", "admin"),
    # Code locations and components
    "reloadRepositoryLocation": Mutation("reload_location", "operator"),
    "reloadWorkspace": Mutation("reload_workspace", "operator"),
    "shutdownRepositoryLocation": Mutation("shutdown_location", "admin"),
    "setAppManagedComponent": Mutation("set_component", "admin"),
    "deleteAppManagedComponent": Mutation("delete_component", "admin"),
    "refreshComponentState": Mutation("refresh_component_state", "admin"),
    # The UI's own bookkeeping: telemetry (off in dagster.yaml) and "what's new" seen.
    "logTelemetry": Mutation("log_telemetry", "free"),
    "setNuxSeen": Mutation("set_nux_seen", "free"),
}

# The launches whose refusal the UI shows only as a PythonError (its launch dialog prints
# that type's message and nothing of an UnauthorizedError's).
LAUNCH_FIELDS = frozenset(
    name for name, m in MUTATIONS.items() if m.rule in ("launch", "reexecute")
)

# Verbs for the refusal message ("operator may not launch backup_verify").
VERBS = {"launch": "launch", "reexecute": "re-execute"}

# Query fields that run code on the code server (a schedule's or sensor's function, a
# partitioned job's config and tags functions, the execution plan from a run config):
# reads that act, so they are judged and audited like the mutations that do the same
# (`scheduleDryRun` and `sensorDryRun` are admin's). Keyed by (parent type, field).
CODE_READS: dict[tuple[str, str], Mutation] = {
    ("DryRunInstigationTick", "evaluationResult"): Mutation("evaluate_tick", "admin"),
    ("Partition", "runConfigOrError"): Mutation("evaluate_partition", "operator"),
    ("Partition", "tagsOrError"): Mutation("evaluate_partition", "operator"),
    ("PartitionTagsAndConfig", "runConfigOrError"): Mutation("evaluate_partition", "operator"),
    ("PartitionTagsAndConfig", "tagsOrError"): Mutation("evaluate_partition", "operator"),
    ("Query", "executionPlanOrError"): Mutation("plan_execution", "operator"),
}
