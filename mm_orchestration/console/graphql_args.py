"""A mutation's arguments as the console reads them: with the names the GraphQL schema
gives them, and what they act on (the runs a launch names, the target an audit entry
names, the assets and partitions touched); reads' arguments that name nothing.

graphql-core hands a resolver each argument under its Python name (`schedule_selector`
for `scheduleSelector`), which differs for some mutations only; everything here reads the
schema's names, so every mutation is read the same whatever Dagster calls it in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from graphql import get_named_type
from graphql.type import GraphQLInputObjectType

from mm_orchestration.console.dagster_private import graphql_schema

# Dagster's implicit asset jobs (a materialisation from the asset graph or page).
ASSET_JOB_PREFIX = "__ASSET_JOB"
# The tags that name which partition a run runs.
PARTITION_TAGS = (
    "dagster/partition",
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)


def graphql_args(field_name: str, args: dict[str, Any], definition: Any = None) -> dict[str, Any]:
    """`args` with the names the GraphQL schema gives them. graphql-core hands a resolver
    each argument (and input field) under its Python name (`schedule_selector` for
    `scheduleSelector`), which differs for some mutations only; judging and auditing read
    the schema's names, so every mutation is read the same whatever Dagster calls it in
    Python. `definition`: the field, from the running schema (default: the pinned one)."""
    if definition is None:
        definition = graphql_schema().mutation_type.fields.get(field_name)
    if definition is None:
        return dict(args)
    return _renamed(args, definition.args)


def _renamed(values: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    by_python_name = {(f.out_name or name): (name, f) for name, f in fields.items()}
    out = {}
    for key, value in values.items():
        name, definition = by_python_name.get(key) or (key, fields.get(key))
        out[name] = _renamed_value(value, definition.type) if definition else value
    return out


def _renamed_value(value: Any, type_: Any) -> Any:
    named = get_named_type(type_)
    if isinstance(value, list):
        return [_renamed_value(v, type_) for v in value]
    if isinstance(value, dict) and isinstance(named, GraphQLInputObjectType):
        return _renamed(value, named.fields)
    return value


def _tags(items: Any) -> dict[str, str]:
    return {str(t["key"]): str(t["value"]) for t in items or [] if t and "key" in t}


def _asset_name(key: Any) -> str | None:
    path = key.get("path") if isinstance(key, dict) else None
    return "/".join(map(str, path)) if path else None


def _asset_names(selection: Any) -> list[str]:
    return [name for name in map(_asset_name, selection or []) if name]


def _job_target(selector: Any) -> tuple[str | None, list[str]]:
    """The job Dagster will run for `selector` (it reads `pipelineName` first), and the
    assets selected. A selector naming two different jobs is judged as both."""
    selector = selector or {}
    names = [n for n in (selector.get("pipelineName"), selector.get("jobName")) if n]
    job = "|".join(dict.fromkeys(names)) or None  # "a|b" is no job anyone may launch
    return job, _asset_names(selector.get("assetSelection"))


def target_of(field_name: str, args: dict[str, Any]) -> str | None:
    """The thing a non-launch mutation acts on, named for the audit trail (arguments as
    the schema names them; tests/console/test_console_front.py checks every mutation gets one)."""
    for key in ("scheduleSelector", "sensorSelector", "selectorData"):
        sel = args.get(key)
        if sel:
            name = sel.get("scheduleName") or sel.get("sensorName")
            return f"{sel.get('repositoryLocationName', '')}:{name}"
    if args.get("partitionsDefName"):  # dynamic partitions
        keys = [args.get("partitionKey")] if args.get("partitionKey") else []
        keys += args.get("partitionKeys") or []
        return f"{args['partitionsDefName']}:{','.join(map(str, keys))}"
    if args.get("componentId") or args.get("defsStateKey"):
        thing = args.get("componentId") or args.get("defsStateKey")
        return f"{args.get('locationName', '')}:{thing}"
    for key in (
        "runId", "backfillId", "repositoryLocationName", "concurrencyKey", "id",
        "scheduleOriginId", "jobOriginId", "scheduleSelectorId", "jobSelectorId",
    ):  # fmt: skip
        if args.get(key):
            return str(args[key])
    if args.get("runIds"):
        return ",".join(map(str, args["runIds"]))
    if args.get("assetPartitionRanges"):
        return ",".join(_asset_names(r.get("assetKey") for r in args["assetPartitionRanges"] if r))
    params = args.get("backfillParams") or args.get("eventParams")
    if isinstance(params, dict):
        sel = params.get("selector") or {}
        if sel.get("partitionSetName"):
            return str(sel["partitionSetName"])
        assets = _asset_names(params.get("assetSelection"))
        assets += _asset_names(
            p.get("assetKey") for p in params.get("partitionsByAssets") or [] if p
        )
        if params.get("assetKey"):
            assets = _asset_names([params["assetKey"]])
            if params.get("checkName"):
                assets = [f"{assets[0]}:{params['checkName']}"]
        return ",".join(assets) or None
    if args.get("reexecutionParams"):
        return str(args["reexecutionParams"].get("parentRunId") or "") or None
    # Mutations of the whole deployment name it.
    return {
        "reloadWorkspace": "workspace",
        "setAutoMaterializePaused": "auto-materialize",
    }.get(field_name)


def _ranges(partitions: Any) -> list[str] | str:
    """A PartitionsSelector as text: `start...end` per range, or "all" when absent."""
    if not partitions:
        return "all"
    ranges = [partitions.get("range"), *(partitions.get("ranges") or [])]
    return [f"{r.get('start')}...{r.get('end')}" for r in ranges if r]


def assets_and_partitions(args: dict[str, Any]) -> dict[str, Any]:
    """The assets a non-launch mutation touches and their partitions, for the audit: a
    wipe's ranges ("all" when it wipes every partition), an event's or a check's
    partition keys, a backfill's partitions."""
    assets: list[str] = []
    partitions: list[Any] = []
    for item in args.get("assetPartitionRanges") or []:
        name = _asset_name((item or {}).get("assetKey"))
        if name:
            assets.append(name)
            partitions.append({"asset": name, "partitions": _ranges(item.get("partitions"))})
    params = args.get("eventParams") or args.get("backfillParams") or {}
    if isinstance(params, dict):
        name = _asset_name(params.get("assetKey"))
        if name:
            assets.append(name)
            keys = [k for k in params.get("partitionKeys") or [] if k is not None]
            partitions.append({"asset": name, "partitions": keys or "unpartitioned"})
        assets += _asset_names(params.get("assetSelection"))
        for item in params.get("partitionsByAssets") or []:
            name = _asset_name((item or {}).get("assetKey"))
            if name:
                assets.append(name)
                partitions.append({"asset": name, "partitions": _ranges(item.get("partitions"))})
        if params.get("partitionNames"):
            partitions.append({"partitions": list(params["partitionNames"])})
        elif params.get("allPartitions"):
            partitions.append({"partitions": "all"})
    if args.get("partitionsDefName"):
        keys = [args["partitionKey"]] if args.get("partitionKey") else []
        partitions.append(
            {
                "partitions_def": args["partitionsDefName"],
                "partitions": keys + list(args.get("partitionKeys") or []),
            }
        )
    if not (assets or partitions):
        return {}
    return {"assets": sorted(set(assets)), "partitions": partitions}


def partition_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tags of `tags` that name which partition a run runs (as Dagster reads them)."""
    return {k: v for k, v in tags.items() if k in PARTITION_TAGS}


@dataclass
class Launch:
    """One run a launch or re-execution would start: its job, assets, partition tags, the
    run it repeats, and the code location and repository it names. `from_parent`: a
    re-execution by `reexecutionParams`, which Dagster builds from the parent run's stored
    origin; `inherits`: the run takes its parent's tags, the partition tags sent here
    upserted over them (such a re-execution, unless `useParentRunTags` is false);
    otherwise the run has only the tags sent (a launch, or a re-execution by
    `executionParams`)."""

    job: str | None
    assets: list[str]
    partitions: dict[str, str]
    parent: str | None
    location: str | None = None
    repository: str | None = None
    inherits: bool = False
    from_parent: bool = False

    @property
    def asset_job(self) -> bool:
        return (self.job or "").startswith(ASSET_JOB_PREFIX)

    @property
    def shown(self) -> str | None:
        """How a refusal names it: an asset job by its assets, else the job."""
        return ",".join(self.assets) if self.asset_job else self.job


def launches(args: dict[str, Any]) -> list[Launch]:
    """The runs a launch or re-execution names, as the client sent them (a
    re-execution's parent is policy's to look up)."""
    reexecution = args.get("reexecutionParams")
    if reexecution:
        # Dagster runs it with its parent's tags (useParentRunTags, default true), the
        # extraTags upserted over them: a partition named there replaces the parent's.
        return [
            Launch(
                None,
                [],
                partition_tags(_tags(reexecution.get("extraTags"))),
                reexecution.get("parentRunId"),
                inherits=reexecution.get("useParentRunTags") is not False,
                from_parent=True,
            )
        ]
    found = []
    for params in args.get("executionParamsList") or [args.get("executionParams") or {}]:
        selector = params.get("selector") or {}
        job, assets = _job_target(selector)
        metadata = params.get("executionMetadata") or {}
        partitions = partition_tags(_tags(metadata.get("tags")))
        found.append(
            Launch(
                job,
                assets,
                partitions,
                metadata.get("parentRunId"),
                selector.get("repositoryLocationName"),
                selector.get("repositoryName"),
            )
        )
    return found


# A segment of a captured log's key is a name (a run id, `compute_logs`, a step key), never
# path syntax: a separator, or a dot segment that climbs out of the logs folder.
_PATH_SYNTAX = re.compile(r"[/\\]|^\.{0,2}$")


def argument_problem(args: dict[str, Any]) -> str | None:
    """Why a read's arguments name nothing the console holds (None: they may), before
    Dagster reads them and fails with a server error: text with a NUL character (no run,
    key or name has one; PostgreSQL and file paths refuse it), or a log key that is not
    one (`capturedLogs(logKey: ["..", ...])`)."""

    def has_nul(value: Any) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(has_nul(k) or has_nul(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return any(has_nul(v) for v in value)
        return False

    if has_nul(args):
        return "the request's text holds a NUL character, which nothing in the console has"
    key = args.get("logKey", args.get("log_key"))
    if key is not None and (
        not isinstance(key, list)
        or not key
        or not all(isinstance(s, str) and not _PATH_SYNTAX.search(s) for s in key)
    ):
        return "logKey is not a log key (names, without /, \\, . or .. segments)"
    return None
