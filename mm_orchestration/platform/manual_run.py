"""A run started from the shell (`mm-jobs run`), stopped the way a shell stops things.

The run executes in this process (Dagster's `execute_in_process`), in a worker thread, so
that the main thread keeps the stop signals: Ctrl-C, SIGTERM and SIGHUP cancel the run at
once. Dagster alone would treat Ctrl-C as an interrupted step and retry it under the job's
retry policy (or call the run FAILED and alert), and SIGTERM would kill the process and
leave the run STARTED for good. The run is tagged with this process's pid and host, so the
local stack, when it stops, can ask it to stop too, and a stack that finds such a run whose
process is gone marks it canceled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from dagster import DagsterInstance, DagsterRun

from mm_orchestration.platform.run_config import refuse_environment_reads

CLI_PID_TAG = "mm/cli_pid"
CLI_HOST_TAG = "mm/cli_host"
EXIT_CANCELED = 4
_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def execute(
    job: Any,
    instance: DagsterInstance,
    run_config: dict[str, Any],
    tags: dict[str, str],
    partition: str | None,
    database_url: str,
    run_id: str | None = None,
    on_stop: Callable[[str], None] | None = None,
) -> str:
    """Run `job` to its end and return the run id (`run_id`, or a new one: the caller may
    have audited it already); on a stop signal, cancel the run (in Dagster and in the
    ledger), write the run's last line (its end, as a run's log ends: monitoring/joblog.py),
    let `on_stop` say why (`stopped by SIGINT`: the command's answer) and exit with
    EXIT_CANCELED."""
    # The shell's door holds to the rule the console's does (run_config.py).
    refuse_environment_reads(run_config)
    # The run's log as JSON lines (joblog.run_logger): Dagster uses a job's own loggers only
    # when the run config names them, else its text console logger.
    run_config = {"loggers": {"console": {}}, **run_config}
    run_id = run_id or str(uuid.uuid4())
    tags = {**tags, CLI_PID_TAG: str(os.getpid()), CLI_HOST_TAG: socket.gethostname()}
    done = threading.Event()
    raised: list[BaseException] = []
    began = time.monotonic()

    def work() -> None:
        try:
            job.execute_in_process(
                run_config=run_config,
                instance=instance,
                tags=tags,
                partition_key=partition,
                run_id=run_id,
                raise_on_error=False,
            )
        except BaseException as exc:  # handed to the main thread
            raised.append(exc)
        finally:
            done.set()

    def stop(signum: int, frame: object) -> None:
        why = signal.Signals(signum).name
        with contextlib.suppress(Exception):
            cancel(instance, run_id, database_url, f"mm-jobs run was stopped ({why})")
        from mm_orchestration.monitoring.joblog import log_event
        from mm_orchestration.monitoring.log_lines import job_name

        name = job_name(job.name, job.tags)
        log_event(
            f"{name}: CANCELED: stopped by {why}", level=logging.WARNING, runId=run_id,
            jobName=name, status="canceled", durationMs=_ran_ms(instance, run_id, began),
        )  # fmt: skip
        if on_stop is not None:
            with contextlib.suppress(Exception):
                on_stop(f"stopped by {why}")
        for stream in (sys.stdout, sys.stderr):  # os._exit flushes nothing
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_CANCELED)  # the worker thread is mid-step: nothing more of it runs

    previous = {sig: signal.signal(sig, stop) for sig in _STOPS}
    try:
        threading.Thread(target=work, name=f"run {run_id}", daemon=True).start()
        while not done.wait(0.2):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if raised:
        raise raised[0]
    return run_id


def _ran_ms(instance: DagsterInstance, run_id: str, began: float) -> int:
    """How long the run has run: from its start as Dagster recorded it, else (it had not
    started) from when this command began it."""
    with contextlib.suppress(Exception):
        record = instance.get_run_record_by_id(run_id)
        if record is not None and record.start_time:
            return max(0, round((time.time() - record.start_time) * 1000))
    return round((time.monotonic() - began) * 1000)


def cancel(instance: DagsterInstance, run_id: str, database_url: str | None, why: str) -> None:
    """Mark an unfinished run canceled in Dagster, its ledger rows canceled, and its
    audit entry (written before it started) ended as canceled."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceled(run, message=f"Canceled: {why}")
    if database_url:
        from mm_orchestration.platform import audit
        from mm_orchestration.platform.db import connect

        with connect(database_url, autocommit=True) as conn:
            conn.execute(
                """UPDATE ops.job_runs SET status = 'canceled', finished_at = now(), error = %s
                    WHERE run_id = %s AND status = 'running'""",
                [why[:4000], run_id],
            )
            audit.settle_run(conn, run_id, "canceled", why)


def cli_process(run: DagsterRun) -> int | None:
    """The pid of the `mm-jobs run` process on this host that runs `run`, if any."""
    if run.tags.get(CLI_HOST_TAG) != socket.gethostname():
        return None
    try:
        return int(run.tags[CLI_PID_TAG])
    except (KeyError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """Whether `pid` is still an `mm-jobs` process (not a pid reused by something else)."""
    import psutil

    try:
        return "mm-jobs" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
