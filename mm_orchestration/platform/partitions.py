"""Which partition a run of a partitioned job may run, judged the same way at every door: the
console (console/policy.py), `mm-jobs run --partition`, and the run coordinator for any other.

A partitioned job run without a partition, or with a key its partitions do not hold (a week
to come, a date in another format, a day that is not a week's Monday), is started by Dagster
all the same and fails in its first step, or, for a range reaching far into the future,
keeps the console busy listing partitions that do not exist. So such a run is refused before
it exists, with a message naming the job, why, and which keys are valid in which format.

A key that cannot be a key of the job (another format) is not quoted back: what was typed
may be a secret pasted into the wrong field. A well-formed key (a date) is. Dynamic
partitions (none of our jobs has them) are left to Dagster: their keys live in the instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from dagster import (
    DynamicPartitionsDefinition,
    PartitionsDefinition,
    TimeWindowPartitionsDefinition,
)

from mm_orchestration.platform.text import NOT_SHOWN

# The tags that name a run's partition (Dagster's own), and a range of partitions for one run.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MAX_KEYS_LISTED = 12


def human_format(fmt: str) -> str:
    """`%Y-%m-%d-%H:%M` as a person reads it: `YYYY-MM-DD-HH:MM`."""
    for code, shown in (("%Y", "YYYY"), ("%m", "MM"), ("%d", "DD"), ("%H", "HH"), ("%M", "MM")):
        fmt = fmt.replace(code, shown)
    return fmt


def _cadence(partitions: TimeWindowPartitionsDefinition) -> tuple[str, str]:
    """(how often, how a key is named), for a time-window partitioning."""
    fmt = human_format(partitions.fmt)
    schedule = getattr(partitions.schedule_type, "name", None)
    if schedule == "HOURLY":
        return "hourly", f"{fmt}, one an hour"
    if schedule == "DAILY":
        return "daily", f"{fmt}, one a day"
    if schedule == "WEEKLY":
        return "weekly", f"{fmt}, each week's {_WEEKDAYS[(partitions.day_offset - 1) % 7]}"
    if schedule == "MONTHLY":
        return "monthly", f"{fmt}, day {partitions.day_offset or 1} of each month"
    return "time-window", f"{fmt}, on cron {partitions.cron_schedule}"


def describe(partitions: PartitionsDefinition) -> str:
    """The keys a run may name, as a refusal lists them: for time windows how often, the
    format, the first and the latest key; else the keys themselves (a few, then how many)."""
    if isinstance(partitions, TimeWindowPartitionsDefinition):
        cadence, named = _cadence(partitions)
        first = partitions.get_first_partition_key()
        last = partitions.get_last_partition_key()
        if first is None or last is None:
            return f"{cadence} partitions ({named}, {partitions.timezone}): none yet"
        return (
            f"{cadence} partitions from {first} to the latest, {last} ({named}, "
            f"{partitions.timezone})"
        )
    keys = list(partitions.get_partition_keys())
    if not keys:
        return "partitions: none yet"
    shown = ", ".join(keys[:_MAX_KEYS_LISTED])
    more = f" and {len(keys) - _MAX_KEYS_LISTED} more" if len(keys) > _MAX_KEYS_LISTED else ""
    return f"partitions {shown}{more}"


def _why_not(partitions: PartitionsDefinition, key: str) -> str:
    """Why `key` is not one of `partitions`' keys, quoting it only when it has their form."""
    if not isinstance(partitions, TimeWindowPartitionsDefinition):
        return f"it is not one of its keys ({NOT_SHOWN})"
    try:
        when = datetime.strptime(key, partitions.fmt)
    except ValueError:
        return f"it is not in the form {human_format(partitions.fmt)} ({NOT_SHOWN})"
    first, last = partitions.get_first_partition_key(), partitions.get_last_partition_key()
    if last is not None and when > datetime.strptime(last, partitions.fmt):
        return f"{key} is after the latest partition, {last} (not due yet)"
    if first is not None and when < datetime.strptime(first, partitions.fmt):
        return f"{key} is before the first partition, {first}"
    return f"{key} does not start one of its partitions"


def _judged(partitions: PartitionsDefinition | None) -> bool:
    return partitions is not None and not isinstance(partitions, DynamicPartitionsDefinition)


def key_problem(job: str, partitions: PartitionsDefinition | None, key: str | None) -> str | None:
    """Why a run of `job` may not run partition `key` (None: it may): a partitioned job
    needs one of its keys; a job without partitions takes none."""
    if partitions is None:
        return None if key is None else f"{job} has no partitions: run it without one"
    if key is None:
        return f"{job} is partitioned: a run needs a partition, one of its {describe(partitions)}"
    if not _judged(partitions) or _has(partitions, key):
        return None
    return (
        f"the partition given is not one of {job}'s: {_why_not(partitions, key)}; choose one "
        f"of its {describe(partitions)}"
    )


def range_problem(
    job: str, partitions: PartitionsDefinition | None, start: str | None, end: str | None
) -> str | None:
    """Why a run of `job` over the partitions `start` to `end` may not run (None: it may):
    both ends are keys of the job, the first not after the last."""
    if partitions is None:
        return f"{job} has no partitions: run it without a partition range"
    if start is None or end is None:
        return (
            f"a partition range of {job} needs both {RANGE_START_TAG} and {RANGE_END_TAG}, "
            f"each one of its {describe(partitions)}"
        )
    if not _judged(partitions):
        return None
    for which, key in (("first", start), ("last", end)):
        if not _has(partitions, key):
            return (
                f"the range's {which} partition is not one of {job}'s: "
                f"{_why_not(partitions, key)}; choose from its {describe(partitions)}"
            )
    if _position(partitions, start) > _position(partitions, end):
        return f"the range of {job} starts at {start}, after its end {end}: swap them"
    return None


def keys_problem(
    job: str, partitions: PartitionsDefinition | None, keys: Sequence[str]
) -> str | None:
    """Why a backfill of `job` over `keys` may not run (None: it may): each is one of its."""
    if partitions is None:
        return f"{job} has no partitions: there is nothing to backfill"
    if not _judged(partitions):
        return None
    bad = [str(key) for key in keys if not _has(partitions, str(key))]
    if not bad:
        return None
    which = (
        "the partition asked for is"
        if len(keys) == 1
        else (f"{len(bad)} of the {len(keys)} partitions asked for are")
    )
    first = _why_not(partitions, bad[0])
    first = f"the first: {first}" if len(bad) > 1 else first
    return f"{which} not {job}'s ({first}); choose from its {describe(partitions)}"


def run_problem(
    job: str, partitions: PartitionsDefinition | None, tags: Mapping[str, str]
) -> str | None:
    """Why a run of `job` with `tags` may not run for its partition (None: it may): its
    `dagster/partition` tag, or its range tags, judged as above."""
    if RANGE_START_TAG in tags or RANGE_END_TAG in tags:
        if PARTITION_TAG in tags:
            return f"a run of {job} names both a partition and a partition range: name one"
        return range_problem(job, partitions, tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG))
    return key_problem(job, partitions, tags.get(PARTITION_TAG))


def _has(partitions: PartitionsDefinition, key: str) -> bool:
    try:
        return bool(partitions.has_partition_key(key))
    except Exception:  # a key Dagster cannot even read is not one of its
        return False


def _position(partitions: PartitionsDefinition, key: str) -> Any:
    if isinstance(partitions, TimeWindowPartitionsDefinition):
        return partitions.time_window_for_partition_key(key).start
    return list(partitions.get_partition_keys()).index(key)


def partitions_of(repository: Any, job: str | None, assets: Iterable[Any]) -> list[Any] | None:
    """The partitionings a run of `job`, or of Dagster's implicit asset job over `assets`
    (asset keys), must name a partition of, read from a repository of Dagster's workspace
    (its snapshot: no code runs): [] for an unpartitioned job, None when the repository
    does not hold the job or an asset (then Dagster answers for it)."""
    found: list[Any] = []
    selected = list(assets)
    if selected:
        graph = repository.asset_graph
        for key in selected:
            if not graph.has(key):
                return None
            partitions = graph.get(key).partitions_def
            if partitions is not None and partitions not in found:
                found.append(partitions)
        return found
    if job is None or not repository.has_job(job):
        return None
    for partition_set in repository.get_partition_sets():
        if partition_set.job_name == job and partition_set.has_partitions_definition():
            partitions = partition_set.get_partitions_definition()
            if partitions not in found:
                found.append(partitions)
    return found


def _repositories(workspace: Any, location: str | None, repository: str | None) -> Iterable[Any]:
    for code_location in workspace.code_locations:
        if location and code_location.name != location:
            continue
        for name, found in code_location.get_repositories().items():
            if not repository or name == repository:
                yield found


def partitions_in(
    workspace: Any,
    job: str | None,
    assets: Iterable[Any] = (),
    location: str | None = None,
    repository: str | None = None,
) -> list[Any] | None:
    """partitions_of for the first repository of Dagster's `workspace` (a request context:
    the console's, or the run coordinator's) that holds the job, within `location` and
    `repository` when named; None when none does or the workspace cannot say (a location
    that failed to load): then Dagster answers for the run itself."""
    try:
        for found in _repositories(workspace, location, repository):
            partitionings = partitions_of(found, job, assets)
            if partitionings is not None:
                return partitionings
    except Exception:  # a judgement of partitions is no reason to fail a launch
        return None
    return None


def partition_set_in(
    workspace: Any, name: str, location: str | None = None, repository: str | None = None
) -> tuple[str, Any] | None:
    """(job, partitioning) of the partition set `name` (a backfill's `partitionSetName`), or
    None when the workspace does not hold it."""
    try:
        for found in _repositories(workspace, location, repository):
            if found.has_partition_set(name):
                partition_set = found.get_partition_set(name)
                partitions = (
                    partition_set.get_partitions_definition()
                    if partition_set.has_partitions_definition()
                    else None
                )
                return str(partition_set.job_name), partitions
    except Exception:
        return None
    return None
