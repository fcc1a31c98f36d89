"""A run request made fit to run for the person sending it: the tags they may set (the
person stamped as the run's `mm/actor`, the system's tags dropped) and the run config as it
may run (run_config.for_person: the Launchpad's resources block dropped, environment reads
and blocks only an admin may set refused), for a launch, a re-execution, a batch or a
backfill; and the config a re-execution would take from its parent, judged the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import yaml

from mm_orchestration.console.dagster_private import (
    HIDDEN_TAG_PREFIX,
    MULTIDIMENSIONAL_PARTITION_PREFIX,
    SYSTEM_TAG_PREFIX,
    load_run_config_yaml,
)
from mm_orchestration.console.graphql_args import PARTITION_TAGS
from mm_orchestration.platform import run_config
from mm_orchestration.platform.ledger import ACTOR_TAG


class StoredRuns(Protocol):
    """Where a re-execution's parent is found (dagster_private.ContextLookups)."""

    def run(self, run_id: str) -> Any: ...

    def backfill(self, backfill_id: str) -> Any: ...


class Unjudgeable(ValueError):
    """A request the gate cannot read well enough to judge: refused with this message."""


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


def _tag_key(key: Any) -> str:
    """A tag's name as a reader may take it: case and surrounding spaces do not matter."""
    return str(key).strip().lower()


def partition_tag(key: Any) -> bool:
    """A partition tag, spelled exactly as Dagster reads it: which partition to run is the
    launcher's choice, whatever their role."""
    name = str(key)
    return name in PARTITION_TAGS or name.startswith(MULTIDIMENSIONAL_PARTITION_PREFIX)


def reserved_tag(key: Any, admin: bool) -> bool:
    """Whether a client-sent tag is the system's to set, not this person's: `mm/...` and
    Dagster's schedule, sensor and backfill tags for everyone (the ledger's window and
    trigger, a forged schedule); for anyone but an admin also every tag of Dagster's
    namespaces (`dagster/priority`, `dagster/max_runtime`, `dagster-k8s/config`, ...).
    Partition tags always pass."""
    if partition_tag(key):
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


def _config_of(params: dict[str, Any]) -> dict[str, Any] | None:
    """A launch's run config as Dagster will read it (YAML text read by Dagster's own
    loader), or None when it sends none; Unjudgeable when it cannot be read as a mapping
    (Dagster would refuse it too, and what it holds cannot be judged)."""
    config = params.get("runConfigData")
    if not config:
        return None
    if isinstance(config, str):
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
    """Every set of params that may carry a run config: a launch's, a re-execution's, a
    batch's, and a backfill's (the pinned schema gives a backfill none; one sent anyway
    is judged like a launch's)."""
    params = [p for p in args.get("executionParamsList") or [args.get("executionParams")] if p]
    backfill = args.get("backfillParams")
    return [*params, backfill] if isinstance(backfill, dict) else params


def inherited_config_problem(args: dict[str, Any], stored: StoredRuns) -> str | None:
    """Why a re-execution may not run the config it takes from its parent (None: it may):
    a re-execution of a run (`reexecutionParams`) or of a backfill runs with the config
    stored with the parent, which may read the environment (a run refused before it was
    queued can still be re-executed). Judged as if the person had sent it."""
    params = args.get("reexecutionParams")
    parent = params.get("parentRunId") if isinstance(params, dict) else None
    if not parent:
        return None
    try:
        found = stored.run(str(parent))
    except Exception:  # not a run id at all; the mutation names no run
        found = None
    if found is None:
        try:
            found = stored.backfill(str(parent))
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
            if params is args.get("backfillParams"):
                continue  # a backfill's runs take their partitions' config, not one sent
            # A launch that sends no config (the UI's partition dialog) still runs with the
            # run's log as JSON lines, as every other launch does.
            config = {}
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


def unjudged_refusal(exc: BaseException) -> str:
    """What a refusal of a request the gate could not read says (no stack trace: the
    message may not quote what it read, which may be a secret)."""
    if isinstance(exc, Unjudgeable):
        return str(exc)
    return (
        f"the request could not be judged ({type(exc).__name__}), so nothing was done; check "
        "its arguments (run ids, run config) and send it again"
    )
