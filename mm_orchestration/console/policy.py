"""Who may do what in the console: each mutation (and each read that runs code) judged
for a person's role, and the role's Dagster permissions. Pure rules: what they need to
know beyond the arguments (a parent run, a schedule's name) they ask `Lookups` for, and
they write nothing (the middleware audits what they decide).

- viewer: reads, and the UI's own bookkeeping (`free`);
- operator: also launches and re-executes the manual jobs and the DLQ tools (by job, or
  by the assets of a manual asset job) and reloads code (`operator`);
- admin: everything (`admin`), and any run.

Whoever launches it, a run of a partitioned job (a launch, a re-execution, each run of a
batch, a backfill's partitions) must name partitions the job has (platform/partitions.py):
refused up front, naming the job and the valid keys, instead of a run that fails. A
re-execution is judged by the tags it will really run with (its parent's, those it sends
upserted over them), a backfill's tags may not name a partition at all (they would replace
each of its runs' own), and a run Dagster cannot re-execute (one of `mm-jobs run`, with no
code location behind it) is refused saying how to run the job again.

Mutations are classified in mutations.py; an unclassified one is refused to everyone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mm_orchestration.console.access import Identity
from mm_orchestration.console.graphql_args import (
    ASSET_JOB_PREFIX,
    Launch,
    assets_and_partitions,
    graphql_args,
    launches,
    partition_tags,
    target_of,
)
from mm_orchestration.console.mutations import MUTATIONS, VERBS, Mutation
from mm_orchestration.console.run_requests import partition_tag
from mm_orchestration.platform import inventory
from mm_orchestration.platform.partitions import (
    PARTITION_TAG,
    keys_problem,
    range_problem,
    run_problem,
)

# What an operator may launch or re-execute: the seed's manual jobs and the DLQ tools,
# by their Dagster job names, and the assets of the manual asset jobs (a materialisation
# from the asset's page launches Dagster's implicit asset job with those assets).
OPERATOR_JOBS = frozenset(
    {spec.dagster_name for spec in inventory.INVENTORY if spec.manual_trigger}
    | {"dlq_requeue", "dlq_discard"}
)
OPERATOR_ASSETS = frozenset(
    asset for spec in inventory.INVENTORY if spec.manual_trigger for asset in spec.assets
)
# Dagster's permissions (by name) an operator has besides reading; per-job rules are
# decide's. An admin has every one, anyone else none.
OPERATOR_PERMISSIONS = frozenset(
    {
        "launch_pipeline_execution",
        "launch_pipeline_reexecution",
        "reload_repository_location",
        "reload_workspace",
    }
)


def dagster_permission(role: str | None, permission: str) -> bool:
    """Whether `role` has Dagster's `permission` (what the UI enables and Dagster allows)."""
    return role == "admin" or (role == "operator" and permission in OPERATOR_PERMISSIONS)


class Lookups(Protocol):
    """What deciding may need to know beyond the arguments (dagster_private.ContextLookups
    asks Dagster's request context)."""

    def run(self, run_id: str) -> Any:
        """The run (its job_name, asset_selection and tags), or None."""

    def instigator_name(self, args: dict[str, Any]) -> str | None:
        """The name of the schedule or sensor the arguments name by id, or None."""

    def partitions(
        self, job: str | None, assets: list[str], location: str | None, repository: str | None
    ) -> list[Any] | None:
        """The partitionings a run of `job` (or of `assets`) must name a partition of: []
        for none, None when it is not known (Dagster then answers for the run)."""

    def partition_set(
        self, name: str, location: str | None, repository: str | None
    ) -> tuple[str, Any] | None:
        """(job, partitioning) of a backfill's partition set, or None when not known."""

    def backfill(self, backfill_id: str) -> Any:
        """The stored backfill (its tags), or None."""


@dataclass
class Decision:
    """What one mutation is, and whether this person may do it."""

    mutation: Mutation
    target: str | None
    job_name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    refusal: str | None = None


def _launchable_by_operator(job: str | None, assets: list[str]) -> bool:
    if job in OPERATOR_JOBS:
        return True
    # A materialisation from an asset's page: allowed when every asset is a manual job's.
    return bool(
        job and job.startswith(ASSET_JOB_PREFIX) and assets and set(assets) <= OPERATOR_ASSETS
    )


def may(identity: Identity | None, rule: str) -> bool:
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
    lookups: Lookups | None,
    definition: Any = None,
) -> Decision:
    """Classify one root mutation with its arguments (as the schema names them, or as a
    resolver gets them) and judge it for `identity` (`lookups`: to find parent runs and
    name schedules and sensors, None when nothing is known; `definition`: the field, see
    graphql_args)."""
    args = graphql_args(field_name, args, definition)
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
        return _decide_run(field_name, mutation, args, identity, lookups, who)
    named = lookups.instigator_name(args) if lookups is not None else None
    target = named or target_of(field_name, args)
    details = assets_and_partitions(args)
    if may(identity, mutation.rule):
        refusal = None
        if field_name == BACKFILL:
            refusal = _backfill_refusal(args, lookups)
        elif field_name in _STORED_BACKFILLS:
            refusal = _stored_backfill_refusal(field_name, args, lookups)
        return Decision(mutation, target, details=details, refusal=refusal)
    verb = mutation.action.replace("_", " ")
    return Decision(
        mutation, target, details=details, refusal=f"{who} may not {verb} ({target or field_name})"
    )


WITH_ITS_BATCH = "refused with its batch: "
BACKFILL = "launchPartitionBackfill"
# Backfills run again from a stored one, with its tags: where each names the stored one.
_STORED_BACKFILLS = {
    "reexecutePartitionBackfill": ("reexecutionParams", "parentRunId"),
    "resumePartitionBackfill": (None, "backfillId"),
}
# How a person names a partition in the console, for the refusals that ask for one.
_CHOOSE = (
    "pick it in the launch dialog's partition picker (or from the job's Partitions tab), "
    f"or send it as the {PARTITION_TAG} tag"
)


def _how_to_choose(launch: Launch) -> str:
    """How the person names a good partition for this kind of request."""
    if launch.inherits:
        return (
            "a re-execution runs with its parent run's partition tags, any it sends "
            f"(extraTags) replacing them: send one of the job's keys as the {PARTITION_TAG} tag"
        )
    if launch.parent:
        return (
            "this re-execution does not take its parent run's tags, only those it sends: "
            f"send one of the job's keys as the {PARTITION_TAG} tag"
        )
    return _CHOOSE


def decide_each(
    field_name: str,
    args: dict[str, Any],
    identity: Identity | None,
    lookups: Lookups | None,
    definition: Any = None,
) -> list[tuple[Decision, dict[str, Any]]]:
    """The decisions for one mutation and the variables each entry records: one per run
    for `launchMultipleRuns` (so each run's entry carries its own run id), else one. A
    batch is refused whole when any of its runs is refused."""
    args = graphql_args(field_name, args, definition)
    params_list = args.get("executionParamsList")
    if field_name != "launchMultipleRuns" or not params_list:
        return [(decide(field_name, args, identity, lookups, definition), args)]
    each = [
        (decide(field_name, {"executionParams": p}, identity, lookups, definition), p)
        for p in params_list
    ]
    refusal = next((d.refusal for d, _ in each if d.refusal), None)
    for i, (decision, _) in enumerate(each):
        decision.details["batch"] = {"run": i + 1, "of": len(each)}
        if refusal and not decision.refusal:
            decision.refusal = f"{WITH_ITS_BATCH}{refusal}"
    return [(d, {"executionParams": p}) for d, p in each]


def _with_parent(launch: Launch, rule: str, lookups: Lookups | None) -> Launch:
    """A run repeated from an earlier one is judged by the earlier run's job (a selector
    naming another job as well is judged as both), assets, and the partition it will
    really run: the parent's partition tags with those sent upserted over them when it
    takes its parent's tags (`reexecutionParams`: Dagster merges them so), else only those
    sent (`executionParams`: the run has the tags sent and no others)."""
    if not launch.parent or (launch.job is not None and rule != "reexecute"):
        return launch
    run = lookups.run(launch.parent) if lookups is not None else None
    if run is None:
        return launch
    job = launch.job
    if job and job != run.job_name:
        job = f"{job}|{run.job_name}"  # both judged: no job anyone may launch
    origin = getattr(run, "remote_job_origin", None)
    inherited = partition_tags(dict(run.tags)) if launch.inherits else {}
    return Launch(
        job or run.job_name,
        launch.assets or sorted(k.to_user_string() for k in run.asset_selection or []),
        {**inherited, **launch.partitions},
        launch.parent,
        launch.location or getattr(origin, "location_name", None),
        launch.repository
        or getattr(getattr(origin, "repository_origin", None), "repository_name", None),
        launch.inherits,
        launch.from_parent,
    )


def _run_details(runs: list[Launch]) -> dict[str, Any]:
    details: dict[str, Any] = {
        "jobs": sorted({str(launch.job) for launch in runs if launch.job}),
        "assets": sorted({a for launch in runs for a in launch.assets}),
        "partitions": [launch.partitions for launch in runs if launch.partitions],
    }
    parents = sorted({launch.parent for launch in runs if launch.parent})
    if parents:
        details["parent_run_ids"] = parents
    return details


def _run_refusal(
    runs: list[Launch], identity: Identity | None, rule: str, who: str, field_name: str
) -> str | None:
    """Why `identity` may not start these runs (None: they may). Admins may start any;
    operators the manual jobs and the DLQ tools (by job or by their assets)."""
    if identity is not None and identity.at_least("admin"):
        return None
    operator = identity is not None and identity.at_least("operator")
    refused = [
        launch
        for launch in runs
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
    lookups: Lookups | None,
    who: str,
) -> Decision:
    """A launch or re-execution: judged by the job (or assets) it would run."""
    runs = [_with_parent(launch, mutation.rule, lookups) for launch in launches(args)]
    details = _run_details(runs)
    jobs = details["jobs"]
    target = ",".join(details["assets"]) if any(x.asset_job for x in runs) else ",".join(jobs)
    # A parent run nobody can find: the run it would repeat is all there is to name.
    target = target or ",".join(details.get("parent_run_ids", []))
    job_name = _seed_name(jobs[0]) if len(jobs) == 1 else None
    refusal = _run_refusal(runs, identity, mutation.rule, who, field_name)
    refusal = refusal or _unrepeatable(runs, lookups) or _partition_refusal(runs, lookups)
    return Decision(mutation, target or None, job_name, details, refusal)


def _unrepeatable(runs: list[Launch], lookups: Lookups | None) -> str | None:
    """Why Dagster cannot re-execute a parent run as asked (None: it can). A re-execution
    by `reexecutionParams` is built from the code location the parent ran from; a run made
    in the process that asked for it (`mm-jobs run`: Dagster's execute_in_process) has
    none, and Dagster would fail with a server error (`CheckError: Expected non-None
    value`). Refused instead, saying how to run the job again."""
    for launch in runs:
        if not launch.from_parent or not launch.parent or lookups is None:
            continue
        run = lookups.run(launch.parent)
        if run is None or getattr(run, "remote_job_origin", None) is not None:
            continue
        partition = run.tags.get(PARTITION_TAG)
        name = _seed_name(str(run.job_name))
        return (
            f"run {launch.parent} of {run.job_name} cannot be re-executed: it ran in the "
            "process that started it (`mm-jobs run`), not from the code location, so Dagster "
            f"has no origin to re-execute it from; launch {run.job_name} anew from the "
            "Launchpad"
            + (f" with partition {partition}" if partition else "")
            + f", or run it again with `mm-jobs run {name}"
            + (f" --partition {partition}`" if partition else "`")
        )
    return None


def _partition_refusal(runs: list[Launch], lookups: Lookups | None) -> str | None:
    """Why one of these runs may not run for the partition it names (None: they may): a
    partitioned job's run names one of its partitions (or a range of them), any other
    none. Judged from the workspace's snapshot of the job, for every role."""
    if lookups is None:
        return None
    for launch in runs:
        if launch.job is None or "|" in launch.job:
            continue  # no job to judge (refused by role already, or Dagster's to refuse)
        found = lookups.partitions(launch.job, launch.assets, launch.location, launch.repository)
        if found is None:
            continue
        name = launch.shown or launch.job
        if len(found) > 1:
            return (
                f"the assets {name} are partitioned differently, so no one partition fits "
                "them all: launch each partitioning on its own"
            )
        problem = run_problem(name, found[0] if found else None, launch.partitions)
        if problem:
            return f"{problem}; {_how_to_choose(launch)}" if found else problem
    return None


def _backfill_refusal(args: dict[str, Any], lookups: Lookups | None) -> str | None:
    """Why a backfill may not run for the partitions it names (None: it may): each one a
    partition of its job (by partition set) or of each asset selected, a range's ends keys
    in order, and some partitions named at all."""
    params = args.get("backfillParams")
    if not isinstance(params, dict):
        return None
    named = _partition_tags_named(params.get("tags"))
    if named:
        return (
            f"a backfill's tags may not name a partition ({', '.join(named)}): Dagster "
            "would run every one of its runs for that partition instead of its own; choose "
            "the backfill's partitions instead"
        )
    if lookups is None:
        return None
    names = [str(n) for n in params.get("partitionNames") or []]
    everything = bool(params.get("allPartitions"))
    selector = params.get("selector") or {}
    if selector.get("partitionSetName"):
        repo = selector.get("repositoryName") or (selector.get("repositorySelector") or {}).get(
            "repositoryName"
        )
        location = selector.get("repositoryLocationName") or (
            selector.get("repositorySelector") or {}
        ).get("repositoryLocationName")
        found = lookups.partition_set(str(selector["partitionSetName"]), location, repo)
        if found is None:
            return None
        job, partitions = found
        if not (names or everything):
            return f"a backfill of {job} names no partitions: choose them (or all of them)"
        return None if everything else keys_problem(job, partitions, names)
    problems = []
    selected = [
        "/".join(map(str, a.get("path") or []))
        for a in params.get("assetSelection") or []
        if isinstance(a, dict)
    ]
    partitioned = {name: lookups.partitions(None, [name], None, None) for name in selected}
    if selected and names and all(found == [] for found in partitioned.values()):
        # Unpartitioned assets ride along in a partitioned backfill (run once), but a
        # backfill of only such assets has nothing to fill (Dagster fails on it).
        problems.append(f"{','.join(selected)} has no partitions: materialise it instead")
    for name, found_assets in partitioned.items():
        if not found_assets or everything:
            continue  # unpartitioned, unknown to the workspace, or every partition
        if not names:
            problems.append(f"a backfill of {name} names no partitions: choose them (or all)")
        else:
            problems.append(keys_problem(name, found_assets[0], names) or "")
    for item in params.get("partitionsByAssets") or []:
        key = (item or {}).get("assetKey") or {}
        name = "/".join(map(str, key.get("path") or []))
        found_assets = lookups.partitions(None, [name], None, None)
        chosen = (item or {}).get("partitions")
        if found_assets is None or not chosen:
            continue  # unknown to the workspace, or every partition
        partitions = found_assets[0] if found_assets else None
        ranges = [chosen.get("range"), *(chosen.get("ranges") or [])]
        for each in (r for r in ranges if r):
            problems.append(
                range_problem(name, partitions, each.get("start"), each.get("end")) or ""
            )
    return next((p for p in problems if p), None)


def _partition_tags_named(tags: Any) -> list[str]:
    """The partition tags (as Dagster reads them) among a backfill's tags, a list of
    {key, value} or a mapping."""
    if isinstance(tags, dict):
        keys = list(tags)
    else:
        keys = [t.get("key") for t in tags or [] if isinstance(t, dict)]
    return sorted({str(k) for k in keys if partition_tag(k)})


def _stored_backfill_refusal(
    field_name: str, args: dict[str, Any], lookups: Lookups | None
) -> str | None:
    """Why a stored backfill may not run again (None: it may): re-executed or resumed, its
    runs carry its stored tags, which may name a partition (a backfill launched before the
    console refused that): each of its runs would run that partition, not its own."""
    holder, key = _STORED_BACKFILLS[field_name]
    params = args.get(holder) if holder else args
    backfill_id = params.get(key) if isinstance(params, dict) else None
    if lookups is None or not backfill_id:
        return None
    try:
        found = lookups.backfill(str(backfill_id))
    except Exception:  # not an id at all: Dagster answers for it
        return None
    named = _partition_tags_named(getattr(found, "tags", None))
    if not named:
        return None
    return (
        f"backfill {backfill_id}'s tags name a partition ({', '.join(named)}), so each of its "
        "runs would run that partition instead of its own: launch a new backfill of the "
        "partitions you want"
    )


def _seed_name(job: str) -> str:
    """The inventory's name of a job (`share-link-expiry`), as the other audit entries and
    the ledger name it; a job outside the inventory keeps Dagster's name."""
    try:
        return inventory.get(job).name
    except inventory.UnknownJobError:
        return job
