"""The idempotency ledger, `ops.job_runs`: claim a job's window, skip it, or finish it.

A window is what one run is responsible for: the scheduled tick for a scheduled run,
the partition for a partitioned one, the run itself for a manual one. At most one run
of a window succeeds (a partial unique index says so); a second is recorded as
'skipped' and does nothing, unless it is forced. Two runs of one window at once are
kept apart by a PostgreSQL advisory lock held for the run's duration, so a crashed
run's 'running' row can be told from a live one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterExecutionInterruptedError, OpExecutionContext
from psycopg.types.json import Jsonb
from pydantic import Field as PydanticField

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform.audit import masked_text, storable_text
from mm_orchestration.platform.config_models import OpConfig
from mm_orchestration.platform.database import PortalDatabase

WINDOW_TAG = "mm/window"
ACTOR_TAG = "mm/actor"
TRIGGER_TAG = "mm/trigger"


@dataclass(frozen=True)
class Window:
    job_name: str
    key: str
    run_id: str
    trigger: str  # schedule, sensor, partition, manual
    actor: str | None = None


@dataclass
class Claim:
    """What the ledger decided for this run, and what the run reports back."""

    window: Window
    skipped: bool
    reason: str | None = None
    held_by: str | None = None  # a skipped claim: the run that holds (or has done) the window
    ledger_id: int | None = None
    rows_affected: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def window_for(context: OpExecutionContext, job_name: str) -> Window:
    """The window a Dagster run is responsible for, from its partition or its tags."""
    tags = context.run.tags
    run_id = context.run_id
    if context.has_partition_key:
        key, trigger = context.partition_key, "partition"
        if "dagster/schedule_name" in tags:
            trigger = "schedule"
    elif WINDOW_TAG in tags:
        key, trigger = tags[WINDOW_TAG], tags.get(TRIGGER_TAG, "schedule")
    else:
        key, trigger = f"manual:{run_id}", tags.get(TRIGGER_TAG, "manual")
    if "dagster/sensor_name" in tags and trigger == "manual":
        trigger = "sensor"
    # The person comes from the run's tag (the console's identity, `mm-jobs run`'s user);
    # never a made-up name: a run launched some other way has no actor on record.
    actor = tags.get(ACTOR_TAG)
    return Window(job_name=job_name, key=key, run_id=run_id, trigger=trigger, actor=actor)


@contextmanager
def claim(db: PortalDatabase, window: Window, force: bool = False) -> Iterator[Claim]:
    """Claim `window` for this run; yields a Claim whose `skipped` says to do nothing.

    On a clean exit the ledger row becomes 'succeeded' with the claim's rows_affected;
    on an exception it becomes 'failed' with the error, and the exception propagates.
    """
    started = time.monotonic()
    with db.session() as conn:
        lock_key = f"{window.job_name}/{window.key}"
        locked = conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [lock_key]
        ).fetchone()
        try:
            if not (locked and locked[0]):
                holder = conn.execute(
                    """SELECT run_id FROM ops.job_runs
                        WHERE job_name = %s AND window_key = %s AND status = 'running'
                        ORDER BY started_at DESC LIMIT 1""",
                    [window.job_name, window.key],
                ).fetchone()
                yield _skip(
                    conn,
                    window,
                    "another run is working on this window right now",
                    holder[0] if holder else None,
                )
                return
            # We hold the lock, so any 'running' row of this window belongs to a dead run.
            conn.execute(
                """UPDATE ops.job_runs
                      SET status = 'failed', finished_at = now(),
                          error = 'abandoned: the run stopped before recording its end'
                    WHERE job_name = %s AND window_key = %s AND status = 'running'""",
                [window.job_name, window.key],
            )
            done = conn.execute(
                """SELECT run_id FROM ops.job_runs
                    WHERE job_name = %s AND window_key = %s AND status = 'succeeded'""",
                [window.job_name, window.key],
            ).fetchone()
            key = window.key
            if done and not force:
                yield _skip(conn, window, f"window already succeeded in run {done[0]}", done[0])
                return
            if done:
                # Forced rerun: its own window, so the one-success-per-window rule holds.
                key = f"{window.key}#forced:{window.run_id}"
            row = conn.execute(
                """INSERT INTO ops.job_runs
                       (job_name, window_key, run_id, status, trigger, actor)
                   VALUES (%s, %s, %s, 'running', %s, %s) RETURNING id""",
                [window.job_name, key, window.run_id, window.trigger, window.actor],
            ).fetchone()
            assert row is not None
            result = Claim(window=window, skipped=False, ledger_id=row[0])
            _log(window, "running")
            try:
                yield result
            except BaseException as exc:
                duration = _ms(started)
                # An interrupt is someone stopping the run, not the job failing.
                stopped = isinstance(exc, KeyboardInterrupt | DagsterExecutionInterruptedError)
                status = "canceled" if stopped else "failed"
                error = "stopped while running" if stopped else f"{type(exc).__name__}: {exc}"
                # Shown in the console and job health: a driver's message may quote a
                # connection string, and a NUL in it would lose the ledger's update.
                error = storable_text(masked_text(error))
                conn.execute(
                    """UPDATE ops.job_runs
                          SET status = %s, finished_at = now(), duration_ms = %s,
                              rows_affected = %s, error = %s, details = %s
                        WHERE id = %s""",
                    [
                        status,
                        duration,
                        result.rows_affected,
                        error[:4000],
                        Jsonb(result.details),
                        result.ledger_id,
                    ],
                )
                _log(window, status, duration, result.rows_affected, error=type(exc).__name__)
                raise
            duration = _ms(started)
            conn.execute(
                """UPDATE ops.job_runs
                      SET status = 'succeeded', finished_at = now(), duration_ms = %s,
                          rows_affected = %s, details = %s
                    WHERE id = %s""",
                [duration, result.rows_affected, Jsonb(result.details), result.ledger_id],
            )
            _log(window, "succeeded", duration, result.rows_affected)
        finally:
            if locked and locked[0]:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [lock_key])


def _skip(conn: Any, window: Window, reason: str, held_by: str | None) -> Claim:
    conn.execute(
        """INSERT INTO ops.job_runs
               (job_name, window_key, run_id, status, finished_at, duration_ms, rows_affected,
                error, trigger, actor)
           VALUES (%s, %s, %s, 'skipped', now(), 0, 0, %s, %s, %s)""",
        [window.job_name, window.key, window.run_id, reason, window.trigger, window.actor],
    )
    _log(window, "skipped", 0, 0, reason=reason)
    return Claim(window=window, skipped=True, reason=reason, held_by=held_by)


@contextmanager
def ledgered(
    context: OpExecutionContext,
    db: PortalDatabase,
    job_name: str,
    tables: Sequence[str],
    force: bool = False,
) -> Iterator[Claim]:
    """The skeleton of every ledgered op, written once: the tables the op needs are
    checked (MissingTableError naming one), this run's window is claimed in
    `ops.job_runs`, and a window already handled is reported as a skip wherever people
    look. Yields the Claim: when `skipped`, the op does nothing and returns.

    Example::

        with ledgered(context, portal_db, SPEC.name, TABLES, config.force) as run:
            if run.skipped:
                return 0
            with portal_db.connection() as conn:
                run.rows_affected = expire(conn)
    """
    db.require(*tables)
    with claim(db, window_for(context, job_name), force=force) as run:
        if run.skipped:
            report_skip(context, run)
        yield run


OUTCOME_TAG = "mm/outcome"
SKIP_REASON_TAG = "mm/skip_reason"


def report_skip(context: OpExecutionContext, run: Claim) -> None:
    """Make a skipped run say so wherever people look: the run's tags (the run list, the
    CLI, the job-health dashboard), the step's metadata and its log. Dagster itself can
    only call the run a success, since nothing failed."""
    tags = {OUTCOME_TAG: "skipped", SKIP_REASON_TAG: run.reason or "window already handled"}
    if run.held_by:
        tags["mm/window_held_by"] = run.held_by
    context.instance.add_run_tags(context.run_id, tags)
    context.add_output_metadata(
        {"outcome": "skipped", "reason": run.reason or "", "window": run.window.key}
    )
    context.log.info(f"Skipped: {run.reason}")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


# A window that failed is an error line, one stopped a warning (as the run's own end is:
# monitoring/joblog.py); its start, success or skip is news.
_LEVELS = {"failed": logging.ERROR, "canceled": logging.WARNING}


def _log(
    window: Window,
    status: str,
    duration_ms: int | None = None,
    rows: int | None = None,
    **extra: Any,
) -> None:
    log_event(
        f"job.{status}",
        level=_LEVELS.get(status, logging.INFO),
        jobName=window.job_name,
        runId=window.run_id,
        windowKey=window.key,
        trigger=window.trigger,
        status=status,
        durationMs=duration_ms,
        rowsAffected=rows,
        **extra,
    )


class WindowConfig(OpConfig):
    """Run configuration every operational job accepts; the defaults are always valid."""

    force: bool = PydanticField(
        default=False,
        description="Run even if this window already succeeded (recorded as a forced run).",
    )
