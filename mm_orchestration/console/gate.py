"""The console's gate on every state-changing GraphQL mutation: decide, audit, then act.

Dagster's webserver hands every resolver to this graphene middleware. For a root mutation
field it

1. works out the action (mutations.MUTATIONS), its target (job, assets and partitions,
   schedule, sensor, run, backfill, location) and whether the person's role allows it;
2. writes one `ops.audit_log` entry with the person, the role, the action, the target and
   the variables (secrets masked), in its own committed transaction, before anything
   happens; if that write fails, nothing happens (no unaudited action);
3. refuses (the entry says `refused`) with an error the UI shows, or passes the mutation
   on; a launch carries the person as the run's `mm/actor` tag, replacing whatever the
   client sent; the entry then records how it ended and the run id.

Mutations must arrive as a POST of JSON (or application/graphql): a GET or a form POST
is what a page on another site can make a signed-in browser send, so those are refused
(and audited) whatever the role.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any

import psycopg
import yaml
from graphql import GraphQLError, GraphQLResolveInfo, OperationType, get_named_type
from graphql.type import GraphQLUnionType

from mm_orchestration import audit
from mm_orchestration.console.access import OPERATOR_ASSETS, OPERATOR_JOBS, Identity
from mm_orchestration.console.mutations import LAUNCH_FIELDS, MUTATIONS, VERBS, Mutation
from mm_orchestration.db import connect
from mm_orchestration.ledger import ACTOR_TAG

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


# Backfills whose runs carry the tags given with them.
_BACKFILLS = frozenset({"launchPartitionBackfill", "reexecutePartitionBackfill"})


class AuditUnavailable(RuntimeError):
    """The audit entry could not be written, so the action is not performed."""


@dataclass
class ConsoleAudit:
    """Writes the console's audit entries to the portal database (DATABASE_URL)."""

    database_url: str

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
    ) -> int:
        with self._conn() as conn:
            return audit.record(
                conn,
                identity.person if identity else "anonymous",
                action,
                job_name,
                run_id,
                {**details, "source": identity.source if identity else None},
                role=identity.role if identity else None,
                target=target,
                outcome=outcome,
            )

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


def _tags(items: Any) -> dict[str, str]:
    return {str(t["key"]): str(t["value"]) for t in items or [] if t and "key" in t}


def _asset_names(selection: Any) -> list[str]:
    return ["/".join(a["path"]) for a in selection or [] if a and a.get("path")]


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
    field_name: str, args: dict[str, Any], identity: Identity | None, context: Any
) -> Decision:
    """Classify one root mutation with its arguments and judge it for `identity`
    (`context`: Dagster's request context, to name runs, schedules and sensors)."""
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
    target = _instigator_name(args, context) or _target(args)
    if _may(identity, mutation.rule):
        return Decision(mutation, target)
    verb = mutation.action.replace("_", " ")
    return Decision(mutation, target, refusal=f"{who} may not {verb} ({target or field_name})")


def _instigator_name(args: dict[str, Any], context: Any) -> str | None:
    """A schedule or sensor switched off by its id: its name, from the workspace."""
    from dagster._core.remote_representation.external import CompoundID

    origin = args.get("scheduleOriginId") or args.get("jobOriginId")
    compound = args.get("id") or origin
    try:
        if compound and CompoundID.is_valid_string(compound):
            cid = CompoundID.from_string(compound)
            origin = cid.remote_origin_id
        if not origin or context is None:
            return None
        for location in context.code_locations:
            for repository in location.get_repositories().values():
                for item in [*repository.get_schedules(), *repository.get_sensors()]:
                    if item.get_remote_origin_id() == origin:
                        return str(item.name)
    except Exception:  # a name is a nicety; the id is still recorded in the variables
        return None
    return None


def _target(args: dict[str, Any]) -> str | None:
    """The thing a non-launch mutation acts on, named for the audit trail."""
    for key in ("scheduleSelector", "sensorSelector", "selectorData"):
        sel = args.get(key)
        if sel:
            name = sel.get("scheduleName") or sel.get("sensorName")
            return f"{sel.get('repositoryLocationName', '')}:{name}"
    for key in ("runId", "backfillId", "repositoryLocationName", "concurrencyKey", "id"):
        if args.get(key):
            return str(args[key])
    if args.get("runIds"):
        return ",".join(map(str, args["runIds"]))
    if args.get("assetPartitionRanges"):
        return ",".join("/".join(r["assetKey"]["path"]) for r in args["assetPartitionRanges"] if r)
    params = args.get("backfillParams") or args.get("eventParams")
    if isinstance(params, dict):
        sel = params.get("selector") or {}
        if sel.get("partitionSetName"):
            return str(sel["partitionSetName"])
        assets = _asset_names(params.get("assetSelection"))
        if params.get("assetKey"):
            assets = ["/".join(params["assetKey"]["path"])]
        return ",".join(assets) or None
    return None


def _decide_run(
    field_name: str,
    mutation: Mutation,
    args: dict[str, Any],
    identity: Identity | None,
    instance: Any,
    who: str,
) -> Decision:
    """A launch or re-execution: judged by the job (or assets) it would run."""
    launches = []  # (job, assets, partitions)
    params_list = args.get("executionParamsList") or [args.get("executionParams") or {}]
    for params in params_list:
        job, assets = _job_target(params.get("selector"))
        tags = _tags((params.get("executionMetadata") or {}).get("tags"))
        partitions = {k: v for k, v in tags.items() if k in _PARTITION_TAGS}
        parent = (params.get("executionMetadata") or {}).get("parentRunId")
        launches.append((job, assets, partitions, parent))
    reexecution = args.get("reexecutionParams")
    if reexecution:
        launches = [(None, [], {}, reexecution.get("parentRunId"))]
    resolved = []
    for job, assets, partitions, parent in launches:
        if parent and (job is None or mutation.rule == "reexecute"):
            run = instance.get_run_by_id(parent) if instance is not None else None
            if run is not None:
                if job and job != run.job_name:
                    job = f"{job}|{run.job_name}"  # both judged: no job anyone may launch
                job = job or run.job_name
                assets = assets or sorted(k.to_user_string() for k in run.asset_selection or [])
                partitions = partitions or {
                    k: v for k, v in run.tags.items() if k in _PARTITION_TAGS
                }
        resolved.append((job, assets, partitions, parent))
    jobs = sorted({str(job) for job, *_ in resolved if job})
    every_asset = sorted({a for _, assets, _, _ in resolved for a in assets})
    details: dict[str, Any] = {
        "jobs": jobs,
        "assets": every_asset,
        "partitions": [p for *_, p, _ in resolved if p],
    }
    if any(parent for *_, parent in resolved):
        details["parent_run_ids"] = sorted({p for *_, p in resolved if p})
    named = [job for job, *_ in resolved]
    target = (
        ",".join(every_asset)
        if any((j or "").startswith(_ASSET_JOB_PREFIX) for j in named)
        else ",".join(jobs)
    )
    job_name = _seed_name(jobs[0]) if len(jobs) == 1 else None
    decision = Decision(mutation, target or None, job_name, details)
    if identity is None or identity.role is None:
        allowed = False
    elif identity.at_least("admin"):
        allowed = True
    elif identity.at_least("operator"):
        allowed = all(_launchable_by_operator(job, assets) for job, assets, *_ in resolved)
    else:
        allowed = False
    if not allowed:
        refused = [
            (job if not (job or "").startswith(_ASSET_JOB_PREFIX) else ",".join(assets))
            for job, assets, *_ in resolved
            if not (
                identity and identity.at_least("operator") and _launchable_by_operator(job, assets)
            )
        ] or named
        what = ", ".join(str(x) for x in refused if x) or field_name
        decision.refusal = f"{who} may not {VERBS[mutation.rule]} {what}"
    return decision


def keep_resources_as_defined(args: dict[str, Any]) -> None:
    """Drop the `resources` block from a launch's run config. The Launchpad sends each
    resource's configured values back (hosts, `{env: ...}` keys, addresses); whoever
    edits them could send the secrets or the reports elsewhere, and without the block
    the run gets exactly the values the definitions give. Admins keep what they send."""
    for params in args.get("executionParamsList") or [args.get("executionParams")]:
        if not params or not params.get("runConfigData"):
            continue
        config = params["runConfigData"]
        if isinstance(config, str):
            try:
                config = yaml.safe_load(config)
            except yaml.YAMLError:
                config = None
            if not isinstance(config, dict):
                # Text that does not read as a mapping is Dagster's to refuse; it cannot
                # carry resources that YAML does not see.
                continue
        if isinstance(config, dict) and "resources" in config:
            params["runConfigData"] = {k: v for k, v in config.items() if k != "resources"}


def _seed_name(job: str) -> str:
    """The inventory's name of a job (`share-link-expiry`), as the other audit entries and
    the ledger name it; a job outside the inventory keeps Dagster's name."""
    from mm_orchestration import inventory

    try:
        return inventory.get(job).name
    except inventory.UnknownJobError:
        return job


def stamp_actor(field_name: str, args: dict[str, Any], person: str) -> None:
    """Make the person the run's `mm/actor`, and drop every control tag the client sent
    (`mm/...`: the ledger's window and trigger, the CLI's pid; the schedule, sensor and
    backfill tags Dagster itself sets), in any case or spacing: only partition tags and
    the client's own labels pass."""
    mine = {"key": ACTOR_TAG, "value": person}

    def control(key: Any) -> bool:
        name = str(key).strip().lower()
        return name not in _PARTITION_TAGS and (
            name.startswith("mm/") or name in _DAGSTER_CONTROL_TAGS
        )

    def stamped(tags: Any) -> list[Any]:
        return [t for t in tags or [] if t and not control(t.get("key"))] + [mine]

    for params in args.get("executionParamsList") or [args.get("executionParams")]:
        if params is None:
            continue
        metadata = params.get("executionMetadata") or {}
        metadata["tags"] = stamped(metadata.get("tags"))
        params["executionMetadata"] = metadata
    if args.get("reexecutionParams") is not None:
        args["reexecutionParams"]["extraTags"] = stamped(args["reexecutionParams"].get("extraTags"))
    if args.get("backfillParams") is not None:
        args["backfillParams"]["tags"] = stamped(args["backfillParams"].get("tags"))


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
    raise GraphQLError(message)


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
        shown = audit.masked(str(message)) if message is not None else None  # a DSN in a trace
        result["message"] = shown[:2000] if shown is not None else None
        return "failed", None, result
    backfill = getattr(value, "backfill_id", None) or getattr(value, "backfillId", None)
    if backfill:
        result["backfill_id"] = str(backfill)
    return "succeeded", str(run_id) if run_id else None, result


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


@dataclass
class ConsoleGate:
    """The graphene middleware (see the module's docstring)."""

    audit_log: ConsoleAudit

    def resolve(
        self, next_: Callable[..., Any], root: Any, info: GraphQLResolveInfo, **args: Any
    ) -> Any:
        if info.operation.operation != OperationType.MUTATION or info.path.prev is not None:
            return next_(root, info, **args)
        context = info.context
        source = getattr(context, "source", None)
        scope = getattr(source, "scope", {}) or {}
        identity: Identity | None = scope.get(IDENTITY_SCOPE_KEY)
        field_name = info.field_name
        decision = decide(field_name, args, identity, context)
        if decision.mutation.rule == "free" and identity is not None and identity.role:
            return next_(root, info, **args)
        problem = _transport_problem(source)
        if problem and decision.refusal is None:
            decision.refusal = problem
        details = {
            **decision.details,
            "mutation": field_name,
            "variables": audit.masked(args),
            "via": f"graphql {getattr(source, 'method', 'websocket')}",
        }
        try:
            entry = self.audit_log.write(
                identity,
                decision.mutation.action,
                "refused" if decision.refusal else "allowed",
                decision.target,
                details | ({"refusal": decision.refusal} if decision.refusal else {}),
                job_name=decision.job_name,
            )
        except AuditUnavailable as exc:
            return _refusal(info, field_name, str(exc))
        if decision.refusal:
            return _refusal(info, field_name, decision.refusal)
        if decision.mutation.rule in ("launch", "reexecute") or field_name in _BACKFILLS:
            assert identity is not None
            stamp_actor(field_name, args, identity.person)
            if not identity.at_least("admin"):
                keep_resources_as_defined(args)
        try:
            result = next_(root, info, **args)
        except Exception as exc:
            self.audit_log.settle(entry, "failed", None, {"error": type(exc).__name__})
            raise
        if isawaitable(result):
            return self._settle_later(entry, result)
        self.audit_log.settle(entry, *_outcome(result))
        return result

    async def _settle_later(self, entry: int, pending: Any) -> Any:
        try:
            value = await pending
        except Exception as exc:
            self.audit_log.settle(entry, "failed", None, {"error": type(exc).__name__})
            raise
        self.audit_log.settle(entry, *_outcome(value))
        return value
