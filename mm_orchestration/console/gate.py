"""The console's gate on every state-changing GraphQL mutation: decide, audit, then act.

Dagster's webserver hands every resolver to this graphene middleware. For a root mutation
field it

1. reads the arguments with the names the schema gives them (graphql-core hands a
   resolver their Python names, `schedule_selector` for `scheduleSelector`), works out
   the action (mutations.MUTATIONS), its target (job, assets and partitions, schedule,
   sensor, run, backfill, location) and whether the person's role allows it;
2. writes one `ops.audit_log` entry (one per run for `launchMultipleRuns`, so each run's
   entry carries its run id) with the person, the role, the action, the target and the
   variables (secrets masked), in its own committed transaction, before anything
   happens; if that write fails, nothing happens (no unaudited action);
3. refuses (the entry says `refused`) with an error the UI shows, or passes the mutation
   on; a launch carries the person as the run's `mm/actor` tag, replacing whatever the
   client sent, and only an admin's keeps tags of Dagster's namespaces (`dagster/...`,
   `dagster-k8s/config`: the run's priority, runtime, pod); the entry then records how it
   ended and the run id.

A mutation whose arguments cannot even be read to judge it (run config YAML that cannot
be built, a run id PostgreSQL refuses) is refused and audited like any other refusal.

Mutations must arrive as a POST of JSON (or application/graphql): a GET or a form POST
is what a page on another site can make a signed-in browser send, so those are refused
(and audited) whatever the role.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any

import psycopg
import yaml
from dagster._core.storage.tags import (
    HIDDEN_TAG_PREFIX,
    MULTIDIMENSIONAL_PARTITION_PREFIX,
    SYSTEM_TAG_PREFIX,
)
from graphql import GraphQLError, GraphQLResolveInfo, OperationType, get_named_type
from graphql.type import GraphQLInputObjectType, GraphQLUnionType

from mm_orchestration.console.access import OPERATOR_ASSETS, OPERATOR_JOBS, Identity
from mm_orchestration.console.mutations import (
    CODE_READS,
    LAUNCH_FIELDS,
    MUTATIONS,
    VERBS,
    Mutation,
)
from mm_orchestration.console.refusals import RefusalLimiter
from mm_orchestration.platform import audit, run_config
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.ledger import ACTOR_TAG

IDENTITY_SCOPE_KEY = "mm.identity"
log = logging.getLogger("mm.console")

# Dagster's implicit asset jobs (a materialisation from the asset graph or page).
_ASSET_JOB_PREFIX = "__ASSET_JOB"
_DAGSTER_CONTROL_TAGS = frozenset(
    {
        "dagster/schedule_name",
        "dagster/sensor_name",
        "dagster/backfill",
        "dagster/tick",
        "dagster/auto_materialize",
        "dagster/from_automation_condition",
    }
)
_PARTITION_TAGS = (
    "dagster/partition",
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)
# Tag namespaces the system reads to run a run, so only an admin may set them: Dagster's
# (`dagster/`: priority, max runtime, concurrency key, retries; `.dagster/`: pools), every
# integration's that shares its name (`dagster-k8s/config` builds the run's pod: image,
# command, service account; `dagster-celery/...`), and ours (`mm/`: actor, window,
# trigger). Dagster names its two prefixes; the integrations' all start with its name.
_RESERVED_PREFIXES = (
    SYSTEM_TAG_PREFIX.rstrip("/"),  # "dagster": dagster/, dagster-k8s/, dagster-celery...
    HIDDEN_TAG_PREFIX.rstrip("/"),  # ".dagster"
    "mm/",
)


# Backfills whose runs carry the tags given with them.
_BACKFILLS = frozenset({"launchPartitionBackfill", "reexecutePartitionBackfill"})


class AuditUnavailable(RuntimeError):
    """The audit entry could not be written, so the action is not performed."""

    status = 503


class RateLimited(AuditUnavailable):
    """Too many refusals of one person in a short time: refused without an entry each
    (the entry that reached the limit says so)."""

    status = 429


class ConsoleRefusal(GraphQLError):
    """A refusal of a mutation whose type has no error to carry it: answered as a client
    error with its message alone (no stack trace: it is no fault of the server)."""


class Unjudgeable(ValueError):
    """A request the gate cannot read well enough to judge: refused with this message."""


@dataclass
class ConsoleAudit:
    """Writes the console's audit entries to the portal database (DATABASE_URL); refusals
    within each person's budget (refusals.RefusalLimiter)."""

    database_url: str
    limiter: RefusalLimiter = field(default_factory=RefusalLimiter)

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        try:
            with connect(self.database_url, autocommit=True) as conn:
                yield conn
        except psycopg.Error as exc:
            # Logged by class only: a driver message may quote the connection string.
            log.error("audit entry not written: %s", type(exc).__name__)
            raise AuditUnavailable(
                "the audit log could not be written, so nothing was done; try again, and "
                "tell the reliability partner if it persists"
            ) from None

    def write(
        self,
        identity: Identity | None,
        action: str,
        outcome: str,
        target: str | None,
        details: dict[str, Any],
        job_name: str | None = None,
        run_id: str | None = None,
        peer: str | None = None,
    ) -> int:
        """One entry; a refusal past its person's budget raises RateLimited instead (and
        the refusal that spends the budget is followed by an entry saying so). `peer`:
        the address a request naming nobody came from (its budget's key)."""
        who = identity.person if identity else "anonymous"
        verdict = "audit"
        if outcome == "refused":
            key = who if identity else f"anonymous@{peer or 'unknown'}"
            verdict = self.limiter.note(key)
            if verdict == "suppress":
                raise RateLimited(
                    "too many refused requests in a short time: this one is refused without "
                    f"an audit entry of its own; wait {self.limiter.retry_after(key)} s"
                )
        source = {"source": identity.source if identity else None}
        if peer and not identity:
            source["peer"] = peer
        with self._conn() as conn:
            entry = audit.record(
                conn,
                who,
                action,
                job_name,
                run_id,
                {**details, **source},
                role=identity.role if identity else None,
                target=target,
                outcome=outcome,
            )
            if verdict == "audit_and_limit":
                audit.record(
                    conn,
                    who,
                    "rate_limited",
                    None,
                    None,
                    {
                        "limit": self.limiter.limit,
                        "window_seconds": self.limiter.window,
                        "note": "further refusals in this window are answered 429 without "
                        "an entry each",
                        **source,
                    },
                    role=identity.role if identity else None,
                    target=who,
                    outcome="refused",
                )
            return entry

    def refuse(
        self,
        identity: Identity | None,
        action: str,
        target: str | None,
        details: dict[str, Any],
        peer: str | None = None,
    ) -> AuditUnavailable | None:
        """Write a refusal's entry (`write`, outcome `refused`); the reason it was not
        written (past the person's budget, the log unavailable), which the caller answers
        with instead of its own refusal, else None."""
        try:
            self.write(identity, action, "refused", target, details, peer=peer)
        except AuditUnavailable as exc:
            return exc
        return None

    def settle(
        self, entry_id: int, outcome: str, run_id: str | None, result: dict[str, Any]
    ) -> None:
        try:
            with self._conn() as conn:
                audit.settle(conn, entry_id, outcome, run_id, result)
        except AuditUnavailable:
            pass  # the entry of the act exists; only its ending could not be added


@dataclass
class Decision:
    """What one mutation is, and whether this person may do it."""

    mutation: Mutation
    target: str | None
    job_name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    refusal: str | None = None


# -- the arguments as the schema spells them ----------------------------------------------


@functools.cache
def _pinned_mutations() -> Any:
    from dagster_graphql.schema import create_schema

    return create_schema().graphql_schema.mutation_type


def graphql_args(field_name: str, args: dict[str, Any], definition: Any = None) -> dict[str, Any]:
    """`args` with the names the GraphQL schema gives them. graphql-core hands a resolver
    each argument (and input field) under its Python name (`schedule_selector` for
    `scheduleSelector`), which differs for some mutations only; judging and auditing read
    the schema's names, so every mutation is read the same whatever Dagster calls it in
    Python. `definition`: the field, from the running schema (default: the pinned one)."""
    if definition is None:
        definition = _pinned_mutations().fields.get(field_name)
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


# -- what a mutation acts on ------------------------------------------------------------


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


def _launchable_by_operator(job: str | None, assets: list[str]) -> bool:
    if job in OPERATOR_JOBS:
        return True
    # A materialisation from an asset's page: allowed when every asset is a manual job's.
    return bool(
        job and job.startswith(_ASSET_JOB_PREFIX) and assets and set(assets) <= OPERATOR_ASSETS
    )


def _may(identity: Identity | None, rule: str) -> bool:
    if identity is None or identity.role is None:
        return False
    return {
        "free": True,
        "operator": identity.at_least("operator"),
        "admin": identity.at_least("admin"),
    }.get(rule, False)


def decide(
    field_name: str,
    args: dict[str, Any],
    identity: Identity | None,
    context: Any,
    definition: Any = None,
) -> Decision:
    """Classify one root mutation with its arguments (as the schema names them, or as a
    resolver gets them) and judge it for `identity` (`context`: Dagster's request context,
    to name runs, schedules and sensors; `definition`: the field, see graphql_args)."""
    args = graphql_args(field_name, args, definition)
    instance = getattr(context, "instance", None)
    mutation = MUTATIONS.get(field_name)
    if mutation is None:
        return Decision(
            Mutation(f"unclassified:{field_name}", "admin"),
            field_name,
            refusal=f"{field_name} is not classified by mm-orchestration's console, so nobody "
            "may use it until it is (mm_orchestration/console/mutations.py)",
        )
    who = identity.role if identity and identity.role else "nobody"
    if mutation.rule in ("launch", "reexecute"):
        return _decide_run(field_name, mutation, args, identity, instance, who)
    target = _instigator_name(args, context) or _target(field_name, args)
    details = _assets_and_partitions(args)
    if _may(identity, mutation.rule):
        return Decision(mutation, target, details=details)
    verb = mutation.action.replace("_", " ")
    return Decision(
        mutation, target, details=details, refusal=f"{who} may not {verb} ({target or field_name})"
    )


_WITH_ITS_BATCH = "refused with its batch: "


def decide_each(
    field_name: str,
    args: dict[str, Any],
    identity: Identity | None,
    context: Any,
    definition: Any = None,
) -> list[tuple[Decision, dict[str, Any]]]:
    """The decisions for one mutation and the variables each entry records: one per run
    for `launchMultipleRuns` (so each run's entry carries its own run id), else one. A
    batch is refused whole when any of its runs is refused."""
    args = graphql_args(field_name, args, definition)
    params_list = args.get("executionParamsList")
    if field_name != "launchMultipleRuns" or not params_list:
        return [(decide(field_name, args, identity, context, definition), args)]
    each = [
        (decide(field_name, {"executionParams": p}, identity, context, definition), p)
        for p in params_list
    ]
    refusal = next((d.refusal for d, _ in each if d.refusal), None)
    for i, (decision, _) in enumerate(each):
        decision.details["batch"] = {"run": i + 1, "of": len(each)}
        if refusal and not decision.refusal:
            decision.refusal = f"{_WITH_ITS_BATCH}{refusal}"
    return [(d, {"executionParams": p}) for d, p in each]


def _instigator_name(args: dict[str, Any], context: Any) -> str | None:
    """A schedule or sensor switched off by its id: its name, from the workspace."""
    from dagster._core.remote_representation.external import CompoundID

    origin = args.get("scheduleOriginId") or args.get("jobOriginId")
    selector_id = args.get("scheduleSelectorId") or args.get("jobSelectorId")
    compound = args.get("id")
    try:
        if compound and CompoundID.is_valid_string(compound):
            cid = CompoundID.from_string(compound)
            origin, selector_id = cid.remote_origin_id, cid.selector_id
        if not (origin or selector_id) or context is None:
            return None
        for location in context.code_locations:
            for repository in location.get_repositories().values():
                for item in [*repository.get_schedules(), *repository.get_sensors()]:
                    if origin == item.get_remote_origin_id() or selector_id == item.selector_id:
                        return str(item.name)
    except Exception:  # a name is a nicety; the id is still recorded in the variables
        return None
    return None


def _target(field_name: str, args: dict[str, Any]) -> str | None:
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


def _assets_and_partitions(args: dict[str, Any]) -> dict[str, Any]:
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


# -- launches and re-executions ------------------------------------------------------------


@dataclass
class _Launch:
    """One run a launch or re-execution would start: its job, assets, partition tags and
    the run it repeats."""

    job: str | None
    assets: list[str]
    partitions: dict[str, str]
    parent: str | None

    @property
    def asset_job(self) -> bool:
        return (self.job or "").startswith(_ASSET_JOB_PREFIX)

    @property
    def shown(self) -> str | None:
        """How a refusal names it: an asset job by its assets, else the job."""
        return ",".join(self.assets) if self.asset_job else self.job


def _launches(args: dict[str, Any]) -> list[_Launch]:
    """The runs a launch or re-execution names, as the client sent them."""
    reexecution = args.get("reexecutionParams")
    if reexecution:
        return [_Launch(None, [], {}, reexecution.get("parentRunId"))]
    launches = []
    for params in args.get("executionParamsList") or [args.get("executionParams") or {}]:
        job, assets = _job_target(params.get("selector"))
        metadata = params.get("executionMetadata") or {}
        tags = _tags(metadata.get("tags"))
        partitions = {k: v for k, v in tags.items() if k in _PARTITION_TAGS}
        launches.append(_Launch(job, assets, partitions, metadata.get("parentRunId")))
    return launches


def _with_parent(launch: _Launch, rule: str, instance: Any) -> _Launch:
    """A run repeated from an earlier one is judged by the earlier run's job (a selector
    naming another job as well is judged as both), assets and partitions."""
    if not launch.parent or (launch.job is not None and rule != "reexecute"):
        return launch
    run = instance.get_run_by_id(launch.parent) if instance is not None else None
    if run is None:
        return launch
    job = launch.job
    if job and job != run.job_name:
        job = f"{job}|{run.job_name}"  # both judged: no job anyone may launch
    return _Launch(
        job or run.job_name,
        launch.assets or sorted(k.to_user_string() for k in run.asset_selection or []),
        launch.partitions or {k: v for k, v in run.tags.items() if k in _PARTITION_TAGS},
        launch.parent,
    )


def _run_details(launches: list[_Launch]) -> dict[str, Any]:
    details: dict[str, Any] = {
        "jobs": sorted({str(launch.job) for launch in launches if launch.job}),
        "assets": sorted({a for launch in launches for a in launch.assets}),
        "partitions": [launch.partitions for launch in launches if launch.partitions],
    }
    parents = sorted({launch.parent for launch in launches if launch.parent})
    if parents:
        details["parent_run_ids"] = parents
    return details


def _run_refusal(
    launches: list[_Launch], identity: Identity | None, rule: str, who: str, field_name: str
) -> str | None:
    """Why `identity` may not start these runs (None: they may). Admins may start any;
    operators the manual jobs and the DLQ tools (by job or by their assets)."""
    if identity is not None and identity.at_least("admin"):
        return None
    operator = identity is not None and identity.at_least("operator")
    refused = [
        launch
        for launch in launches
        if not (operator and _launchable_by_operator(launch.job, launch.assets))
    ]
    if not refused:
        return None
    what = ", ".join(str(x) for x in (launch.shown for launch in refused) if x) or field_name
    return f"{who} may not {VERBS[rule]} {what}"


def _decide_run(
    field_name: str,
    mutation: Mutation,
    args: dict[str, Any],
    identity: Identity | None,
    instance: Any,
    who: str,
) -> Decision:
    """A launch or re-execution: judged by the job (or assets) it would run."""
    launches = [_with_parent(launch, mutation.rule, instance) for launch in _launches(args)]
    details = _run_details(launches)
    jobs = details["jobs"]
    target = ",".join(details["assets"]) if any(x.asset_job for x in launches) else ",".join(jobs)
    # A parent run nobody can find: the run it would repeat is all there is to name.
    target = target or ",".join(details.get("parent_run_ids", []))
    job_name = _seed_name(jobs[0]) if len(jobs) == 1 else None
    refusal = _run_refusal(launches, identity, mutation.rule, who, field_name)
    return Decision(mutation, target or None, job_name, details, refusal)


def _config_of(params: dict[str, Any]) -> dict[str, Any] | None:
    """A launch's run config as Dagster will read it (YAML text read by Dagster's own
    loader), or None when it sends none; Unjudgeable when it cannot be read as a mapping
    (Dagster would refuse it too, and what it holds cannot be judged)."""
    config = params.get("runConfigData")
    if not config:
        return None
    if isinstance(config, str):
        from dagster_shared.yaml_utils import load_run_config_yaml

        try:
            config = load_run_config_yaml(config)
        except (yaml.YAMLError, ValueError, TypeError, RecursionError, OverflowError) as exc:
            # A date such as 2026-13-45, nesting deeper than Python recurses, bad YAML.
            raise Unjudgeable(
                f"the run config could not be read ({type(exc).__name__}); correct it and "
                "launch again"
            ) from None
    if not isinstance(config, dict):
        raise Unjudgeable("the run config is not a mapping (ops: {...}); correct it")
    return config


def _run_params(args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every set of params that carries a run config: a launch's, a re-execution's, a
    batch's, and a backfill's (whose runs all take it)."""
    params = [p for p in args.get("executionParamsList") or [args.get("executionParams")] if p]
    backfill = args.get("backfillParams")
    return [*params, backfill] if isinstance(backfill, dict) else params


def inherited_config_problem(args: dict[str, Any], context: Any) -> str | None:
    """Why a re-execution may not run the config it takes from its parent (None: it may):
    a re-execution of a run (`reexecutionParams`) or of a backfill runs with the config
    stored with the parent, which may read the environment (a run refused before it was
    queued can still be re-executed). Judged as if the person had sent it."""
    params = args.get("reexecutionParams")
    parent = params.get("parentRunId") if isinstance(params, dict) else None
    instance = getattr(context, "instance", None)
    if not parent or instance is None:
        return None
    try:
        found = instance.get_run_by_id(str(parent))
    except Exception:  # not a run id at all; the mutation names no run
        found = None
    if found is None and hasattr(instance, "get_backfill"):
        try:
            found = instance.get_backfill(str(parent))
        except Exception:
            found = None
    config = getattr(found, "run_config", None)
    try:
        run_config.refuse_environment_reads(config or {})
    except run_config.RunConfigRefused as exc:
        return f"re-executing {parent} would run the config stored with it, and {exc}"
    return None


def apply_config_policy(args: dict[str, Any], admin: bool) -> None:
    """Each launch's run config as it may run for this person (run_config.for_person):
    the resources block the Launchpad sends back dropped (the run gets the values the
    definitions give), a block the person may not set or a read of the environment
    refused (Unjudgeable, with the reason)."""
    for params in _run_params(args):
        config = _config_of(params)
        if config is None:
            continue
        try:
            params["runConfigData"] = run_config.for_person(config, admin)
        except run_config.RunConfigRefused as exc:
            raise Unjudgeable(str(exc)) from None


def config_problem(args: dict[str, Any], admin: bool) -> str | None:
    """Why a launch's run config may not run for this person (None: it may): checked
    before the entry is written, so the entry says `refused` and why."""
    trial = {"executionParamsList": [dict(p) for p in _run_params(args)]}
    try:
        apply_config_policy(trial, admin)
    except Unjudgeable as exc:
        return str(exc)
    return None


def _unreadable(exc: BaseException) -> str:
    """What a refusal of a request the gate could not read says (no stack trace: the
    message may not quote what it read, which may be a secret)."""
    if isinstance(exc, Unjudgeable):
        return str(exc)
    return (
        f"the request could not be judged ({type(exc).__name__}), so nothing was done; check "
        "its arguments (run ids, run config) and send it again"
    )


def _seed_name(job: str) -> str:
    """The inventory's name of a job (`share-link-expiry`), as the other audit entries and
    the ledger name it; a job outside the inventory keeps Dagster's name."""
    from mm_orchestration.platform import inventory

    try:
        return inventory.get(job).name
    except inventory.UnknownJobError:
        return job


def _tag_key(key: Any) -> str:
    """A tag's name as a reader may take it: case and surrounding spaces do not matter."""
    return str(key).strip().lower()


def _partition_tag(key: Any) -> bool:
    """A partition tag, spelled exactly as Dagster reads it: which partition to run is the
    launcher's choice, whatever their role."""
    name = str(key)
    return name in _PARTITION_TAGS or name.startswith(MULTIDIMENSIONAL_PARTITION_PREFIX)


def reserved_tag(key: Any, admin: bool) -> bool:
    """Whether a client-sent tag is the system's to set, not this person's: `mm/...` and
    Dagster's schedule, sensor and backfill tags for everyone (the ledger's window and
    trigger, a forged schedule); for anyone but an admin also every tag of Dagster's
    namespaces (`dagster/priority`, `dagster/max_runtime`, `dagster-k8s/config`, ...).
    Partition tags always pass."""
    if _partition_tag(key):
        return False
    name = _tag_key(key)
    if name.startswith("mm/") or name in _DAGSTER_CONTROL_TAGS:
        return True
    return not admin and name.startswith(_RESERVED_PREFIXES)


def _tag_lists(args: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Every (holder, field) of a launch, a re-execution or a backfill that carries tags."""
    for params in args.get("executionParamsList") or [args.get("executionParams")]:
        if params is None:
            continue
        if params.get("executionMetadata") is None:
            params["executionMetadata"] = {}
        yield params["executionMetadata"], "tags"
    if args.get("reexecutionParams") is not None:
        yield args["reexecutionParams"], "extraTags"
    if args.get("backfillParams") is not None:
        yield args["backfillParams"], "tags"


def dropped_tags(args: dict[str, Any], admin: bool) -> list[str]:
    """The tag names stamp_actor will drop, for the audit entry (written before)."""
    names = {
        str(t.get("key"))
        for holder, name in _tag_lists(args)
        for t in holder.get(name) or []
        if t and reserved_tag(t.get("key"), admin)
    }
    return sorted(names)


def stamp_actor(field_name: str, args: dict[str, Any], person: str, admin: bool = False) -> None:
    """Make the person the run's `mm/actor`, and drop every reserved tag the client sent
    (reserved_tag), in any case or spacing: a non-admin keeps only partition tags and
    their own labels; an admin may also set Dagster's (the entry records them)."""
    mine = {"key": ACTOR_TAG, "value": person}
    for holder, name in _tag_lists(args):
        kept = [t for t in holder.get(name) or [] if t and not reserved_tag(t.get("key"), admin)]
        holder[name] = [*kept, mine]


def _refusal(info: GraphQLResolveInfo, field_name: str, message: str) -> Any:
    """An error of a type the mutation may return and the UI shows, else a GraphQL error."""
    from dagster_graphql.schema.errors import GraphenePythonError, GrapheneUnauthorizedError
    from dagster_shared.error import SerializableErrorInfo

    named = get_named_type(info.return_type)
    members = {t.name for t in named.types} if isinstance(named, GraphQLUnionType) else set()
    if "PythonError" in members and (
        field_name in LAUNCH_FIELDS or "UnauthorizedError" not in members
    ):
        return GraphenePythonError(
            SerializableErrorInfo(message=message, stack=[], cls_name="PermissionDenied")
        )
    if "UnauthorizedError" in members:
        return GrapheneUnauthorizedError(message=message)
    raise ConsoleRefusal(message)


def _outcome(value: Any) -> tuple[str, str | None, dict[str, Any]]:
    """(outcome, run id, what the result said) from what the resolver returned."""
    meta = getattr(type(value), "_meta", None)
    typename = getattr(meta, "name", type(value).__name__)
    run = getattr(value, "run", None)
    run_id = getattr(run, "runId", None) if run is not None else None
    result: dict[str, Any] = {"type": typename}
    interfaces = {i._meta.name for i in getattr(meta, "interfaces", ())}
    if interfaces & {"Error", "PipelineConfigValidationInvalid"} or typename.endswith("Error"):
        message = getattr(value, "message", None)
        if message is None:
            message = getattr(value, "_message", None)
        # A DSN or a password may be quoted in a trace.
        result["message"] = audit.masked_text(str(message))[:2000] if message is not None else None
        # Run config Dagster rejects says why in its errors, not in a message.
        errors = [getattr(e, "message", None) for e in getattr(value, "errors", None) or []]
        if errors:
            result["errors"] = [audit.masked_text(str(e))[:500] for e in errors[:20] if e]
            if result["message"] is None:
                result["message"] = "; ".join(result["errors"])[:2000]
        return "failed", None, result
    backfill = getattr(value, "backfill_id", None) or getattr(value, "backfillId", None)
    if backfill:
        result["backfill_id"] = str(backfill)
    return "succeeded", str(run_id) if run_id else None, result


def _request_memo(context: Any) -> dict[str, Any]:
    """What the gate decided once for this request (Dagster makes a request context per
    request): one verdict, and one audit entry, however many fields the request holds."""
    memo = getattr(context, "_mm_gate_memo", None)
    if memo is None:
        memo = {}
        try:
            context._mm_gate_memo = memo
        except AttributeError:  # a context that takes no attributes: judged field by field
            pass
    return memo


def _root_fields(info: GraphQLResolveInfo) -> dict[str, str]:
    """The operation's root fields as graphql-core executes them (aliases, fragments and
    directives applied): response key -> field name, without `__typename`."""
    from graphql.execution.collect_fields import collect_fields

    fields = collect_fields(
        info.schema,
        info.fragments,
        info.variable_values,
        info.parent_type,
        info.operation.selection_set,
    )
    return {
        key: nodes[0].name.value
        for key, nodes in fields.items()
        if not nodes[0].name.value.startswith("__")
    }


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


def _transport_problem(source: Any) -> str | None:
    """Why a mutation may not come this way (None: a POST of JSON or GraphQL)."""
    method = getattr(source, "method", None)
    if method is None:  # a websocket: handled where subscriptions start
        return None
    # The media type itself, parsed: `text/plain;charset=application/json` is a simple
    # request any site's page may send, and it merely mentions JSON.
    content_type = source.headers.get("content-type", "").split(";")[0].strip().lower()
    if method != "POST" or content_type not in ("application/json", "application/graphql"):
        return (
            "mutations are accepted only as a POST of application/json: another site's page "
            "can make a signed-in browser send a GET or a form"
        )
    return None


def ended_by(exc: BaseException) -> tuple[str, str | None, dict[str, Any]]:
    """The outcome of an action whose resolver raised: `failed` for an error, and
    `canceled` when it was cancelled (the client went away, the server is stopping), with
    `interrupted` in the details, which leaves open whether Dagster did it; never
    `allowed` for ever."""
    if isinstance(exc, Exception):
        return "failed", None, {"error": type(exc).__name__}
    return "canceled", None, {"error": type(exc).__name__, "interrupted": True}


def _outcomes(
    field_name: str, value: Any, entries: int
) -> list[tuple[str, str | None, dict[str, Any]]]:
    """One outcome per audit entry: a batch's runs each from their own result."""
    results = getattr(value, "launchMultipleRunsResult", None)
    if field_name == "launchMultipleRuns" and results is not None and len(results) == entries:
        return [_outcome(result) for result in results]
    return [_outcome(value)] * entries


@dataclass
class ConsoleGate:
    """The graphene middleware (see the module's docstring)."""

    audit_log: ConsoleAudit

    def resolve(
        self, next_: Callable[..., Any], root: Any, info: GraphQLResolveInfo, **args: Any
    ) -> Any:
        if info.operation.operation != OperationType.MUTATION or info.path.prev is not None:
            # A query's fields, and the fields of a mutation's result: a result can reach
            # the reads that run code (a reloaded location's schedules' `futureTicks {
            # evaluationResult }`), judged and audited there as in a query.
            return self._read(next_, root, info, args)
        if info.field_name.startswith("__"):  # `mutation { __typename }` changes nothing
            return next_(root, info, **args)
        context = info.context
        source = getattr(context, "source", None)
        scope = getattr(source, "scope", {}) or {}
        identity: Identity | None = scope.get(IDENTITY_SCOPE_KEY)
        field_name = info.field_name
        memo = _request_memo(context)
        if "batch" not in memo:
            memo["batch"] = self._judge_batch(info, identity, source)
        if memo["batch"]:
            return _refusal(info, field_name, memo["batch"])
        definition = info.parent_type.fields.get(field_name)
        try:
            decisions = decide_each(field_name, args, identity, context, definition)
            admin = identity is not None and identity.at_least("admin")
            run = decisions[0][0].mutation.rule in ("launch", "reexecute")
            configured = run or field_name in _BACKFILLS
            unreadable = config_problem(args, admin) if configured else None
            unreadable = unreadable or inherited_config_problem(args, context)
        except Exception as exc:  # whatever it is, it is audited and refused
            return self._unjudged(info, identity, field_name, args, source, exc)
        problem = _transport_problem(source) or unreadable
        entries = []
        for decision, variables in decisions:
            if problem and decision.refusal is None:
                decision.refusal = problem
            if configured:
                dropped = dropped_tags(variables, admin)
                if dropped:
                    decision.details["dropped_tags"] = dropped
            try:
                entries.append(self._write(identity, field_name, decision, variables, source))
            except AuditUnavailable as exc:
                return _refusal(info, field_name, str(exc))
        # The UI shows the refusal of a run of the batch itself, not of its companions.
        refusals = [d.refusal for d, _ in decisions if d.refusal]
        refusal = next((r for r in refusals if not r.startswith(_WITH_ITS_BATCH)), None)
        refusal = refusal or next(iter(refusals), None)
        if refusal:
            return _refusal(info, field_name, refusal)
        if configured:
            assert identity is not None
            try:
                stamp_actor(field_name, args, identity.person, admin)
                apply_config_policy(args, admin)
            except Exception as exc:  # the entry must end, and say why
                message = _unreadable(exc)
                self._settle(entries, [("refused", None, {"refusal": message})] * len(entries))
                return _refusal(info, field_name, message)
        try:
            result = next_(root, info, **args)
        except BaseException as exc:
            self._settle(entries, [ended_by(exc)] * len(entries))
            raise
        if isawaitable(result):
            return self._settle_later(field_name, entries, result)
        self._settle(entries, _outcomes(field_name, result, len(entries)))
        return result

    def _judge_batch(
        self, info: GraphQLResolveInfo, identity: Identity | None, source: Any
    ) -> str | None:
        """Why this request's operation may not run (None: it may): it holds more than one
        mutation (aliases, fragments). One request is one action and one audit entry, so
        such a request is refused whole with one entry listing what it held; the console's
        own UI never sends one."""
        fields = _root_fields(info)
        if len(fields) <= 1:
            return None
        counts: dict[str, int] = {}
        for name in fields.values():
            counts[name] = counts.get(name, 0) + 1
        held = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counts.items()))
        refusal = (
            f"one mutation per request: this one holds {len(fields)} ({held[:300]}); send "
            "each on its own"
        )
        unwritten = self.audit_log.refuse(
            identity,
            "graphql_request",
            None,
            {
                "mutations": counts,
                "via": f"graphql {getattr(source, 'method', 'websocket')}",
                "refusal": refusal,
            },
        )
        return str(unwritten) if unwritten else refusal

    def _read(
        self, next_: Callable[..., Any], root: Any, info: GraphQLResolveInfo, args: dict[str, Any]
    ) -> Any:
        """A field of a query: passed on, except the reads that run code (CODE_READS),
        which are judged like the mutations that do the same and audited once per
        request, and the UI's invitation to a third party's newsletter, which is never
        shown."""
        if info.field_name == "shouldShowNux" and info.path.prev is None:
            return False
        problem = argument_problem(args)
        if problem:
            raise ConsoleRefusal(problem)  # the client's error: a 400, not a server fault
        read = CODE_READS.get((info.parent_type.name, info.field_name))
        if read is None:
            return next_(root, info, **args)
        context = info.context
        source = getattr(context, "source", None)
        scope = getattr(source, "scope", {}) or {}
        identity: Identity | None = scope.get(IDENTITY_SCOPE_KEY)
        admin = identity is not None and identity.at_least("admin")
        memo = _request_memo(context)
        key = f"read:{read.action}"
        if key not in memo:
            refusal = None
            if not _may(identity, read.rule):
                who = identity.role if identity and identity.role else "nobody"
                refusal = f"{who} may not {read.action.replace('_', ' ')} ({info.field_name})"
            elif "runConfigData" in args:
                refusal = config_problem({"executionParams": dict(args)}, admin)
            details = {
                "query_field": f"{info.parent_type.name}.{info.field_name}",
                "variables": audit.masked(dict(info.variable_values or {})),
                "via": f"graphql {getattr(source, 'method', 'websocket')}",
                **({"refusal": refusal} if refusal else {}),
            }
            try:
                self.audit_log.write(
                    identity, read.action, "refused" if refusal else "succeeded", None, details
                )
            except AuditUnavailable as exc:
                refusal = str(exc)
            memo[key] = refusal
        if memo[key]:
            return _refusal(info, info.field_name, memo[key])
        if "runConfigData" in args:
            trial = {"executionParams": dict(args)}
            apply_config_policy(trial, admin)
            args = trial["executionParams"]
        return next_(root, info, **args)

    def _unjudged(
        self,
        info: GraphQLResolveInfo,
        identity: Identity | None,
        field_name: str,
        args: dict[str, Any],
        source: Any,
        exc: Exception,
    ) -> Any:
        """A mutation the gate could not judge (its arguments made reading them raise):
        refused, with an entry saying why, and a GraphQL error instead of a stack trace."""
        mutation = MUTATIONS.get(field_name) or Mutation(f"unclassified:{field_name}", "admin")
        message = _unreadable(exc)
        decision = Decision(mutation, None, refusal=message)
        decision.details["error"] = type(exc).__name__
        try:
            self._write(identity, field_name, decision, args, source)
        except AuditUnavailable as unavailable:
            message = str(unavailable)
        return _refusal(info, field_name, message)

    def _write(
        self,
        identity: Identity | None,
        field_name: str,
        decision: Decision,
        variables: dict[str, Any],
        source: Any,
    ) -> int:
        details = {
            **decision.details,
            "mutation": field_name,
            "variables": audit.masked(variables),
            "via": f"graphql {getattr(source, 'method', 'websocket')}",
        }
        return self.audit_log.write(
            identity,
            decision.mutation.action,
            "refused" if decision.refusal else "allowed",
            decision.target,
            details | ({"refusal": decision.refusal} if decision.refusal else {}),
            job_name=decision.job_name,
        )

    def _settle(
        self, entries: list[int], outcomes: list[tuple[str, str | None, dict[str, Any]]]
    ) -> None:
        for entry, outcome in zip(entries, outcomes, strict=True):
            self.audit_log.settle(entry, *outcome)

    async def _settle_later(self, field_name: str, entries: list[int], pending: Any) -> Any:
        try:
            value = await pending
        except BaseException as exc:
            self._settle(entries, [ended_by(exc)] * len(entries))
            raise
        self._settle(entries, _outcomes(field_name, value, len(entries)))
        return value
