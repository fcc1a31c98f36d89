"""Stopping `mm-jobs dev` and `mm-jobs prod-local` the ways the world stops them: a terminal's
Ctrl-C (SIGINT to the whole foreground group), a process manager's SIGTERM (to the main
process, with SIGINT ignored as for a background job of a script), a closed terminal's SIGHUP.
Each leaves no process behind within 15 s. A run in flight when the stack stops ends
CANCELED, not FAILED, so nobody is alerted, and the next start carries on."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from mm_orchestration.local.embedded_pg import EmbeddedPostgres, free_port
from mm_orchestration.platform import inventory
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.instance import write_home
from tests.local_stack import graphql, own_env, start, wait_until_serving
from tests.sendgrid_server import Reply, SendGridRecorder

STOP_WITHIN_SECONDS = 15

LAUNCH = """
mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""


def _everything(pid: int, data: Path) -> list[psutil.Process]:
    """The stack's processes: the main one, its descendants and PostgreSQL."""
    main = psutil.Process(pid)
    found = [main, *main.children(recursive=True)]
    pidfile = data / "postgres" / "data" / "postmaster.pid"
    if pidfile.exists():
        found.append(psutil.Process(int(pidfile.read_text().split()[0])))
    return found


def _when_up(proc: subprocess.Popen[bytes], port: int, data: Path, log: Path) -> list[Any]:
    """Once the console serves and the supervisor says it is up: every process of the stack."""
    wait_until_serving(port, proc, log)
    deadline = time.monotonic() + 90
    while "Ctrl-C stops everything" not in log.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    family = _everything(proc.pid, data)
    assert len(family) >= 4, family  # main, dagster processes, PostgreSQL
    return family


def _assert_stopped_in_time(
    proc: object, family: list[psutil.Process], stop_sent: float, log: Path
) -> None:
    gone, alive = psutil.wait_procs(family, timeout=STOP_WITHIN_SECONDS + 5)
    took = time.monotonic() - stop_sent
    leftover = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive if p.is_running()]
    for p in alive:
        p.kill()
    assert leftover == [], f"left running after {took:.1f} s: {leftover}\n{log.read_text()[-3000:]}"
    assert took <= STOP_WITHIN_SECONDS, f"took {took:.1f} s\n{log.read_text()[-3000:]}"


def _args(command: str, port: int) -> list[str]:
    args = [command, "--port", str(port), "--reports-port", str(free_port())]
    return [*args, "--grpc-port", str(free_port())] if command == "prod-local" else args


# How each way of stopping is sent: (to the group?, signal, SIGINT ignored at start?)
WAYS = {
    "terminal-ctrl-c": (True, signal.SIGINT, False),
    "process-manager-sigterm": (False, signal.SIGTERM, True),
    "terminal-closed-sighup": (False, signal.SIGHUP, False),
    # A closing terminal hangs up its whole foreground group; make passes SIGTERM on to its
    # recipe's process but not SIGHUP, so behind make only the group's SIGHUP is real.
    "terminal-closed-sighup-to-the-group": (True, signal.SIGHUP, False),
    "sigterm-to-the-group": (True, signal.SIGTERM, True),
}


# Each stack is stopped two ways through `mm-jobs` and once or twice through `make` (in a
# script's background, SIGINT ignored); dev's Ctrl-C is the mid-run test below, and
# tests/local/test_dev_command.py stops both with a plain Ctrl-C.
CASES = [
    ("dev", "process-manager-sigterm", False),
    ("dev", "terminal-closed-sighup", False),
    ("prod-local", "terminal-ctrl-c", False),
    ("prod-local", "process-manager-sigterm", False),
    ("dev", "sigterm-to-the-group", True),
    ("dev", "terminal-closed-sighup-to-the-group", True),
    ("prod-local", "process-manager-sigterm", True),
]


@pytest.mark.parametrize(("command", "way", "via_make"), CASES)
def test_every_way_of_stopping_leaves_nothing(
    tmp_path: Path, command: str, way: str, via_make: bool
) -> None:
    to_group, sig, ignore_sigint = WAYS[way]
    port = free_port()
    data, log = tmp_path / "mm", tmp_path / f"{command}.log"
    args = _args(command, port)
    if via_make:
        args, ignore_sigint = [command, f"DEV_ARGS={' '.join(args[1:])}"], True
    proc = start(args, own_env(data), log, ignore_sigint=ignore_sigint, make=via_make)
    try:
        family = _when_up(proc, port, data, log)
    finally:
        stop_sent = time.monotonic()
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    _assert_stopped_in_time(proc, family, stop_sent, log)
    assert "embedded PostgreSQL stopped" in log.read_text()


def test_a_run_in_flight_when_dev_stops_is_canceled_and_alerts_nobody(tmp_path: Path) -> None:
    """Under `mm-jobs dev`: a scheduled share-link expiry meets its 60 s SLA; then a run is
    stuck in its SendGrid call when the terminal's Ctrl-C comes; it ends CANCELED, nothing
    is left running, and the next start serves again with that run still CANCELED."""
    sendgrid = SendGridRecorder()
    port = free_port()
    data, log = tmp_path / "mm", tmp_path / "dev.log"
    quiet = [f"{s.name}=0 0 1 1 *" for s in inventory.INVENTORY if s.name != "share-link-expiry"]
    env = own_env(
        data,
        SENDGRID_API_KEY="SG.test-key",
        SENDGRID_API_HOST=sendgrid.url,
        SENDGRID_DIGEST_TEMPLATE_ID="d-test",
        MM_SCHEDULE_OVERRIDES=";".join(["share-link-expiry=* * * * *", *quiet]),
    )
    proc = start(_args("dev", port), env, log)
    home = data / "dagster_home"
    try:
        wait_until_serving(port, proc, log)
        instance = DagsterInstance.from_config(str(home))
        deadline = time.monotonic() + 150
        while True:
            done = [
                r
                for r in instance.get_run_records(
                    filters=RunsFilter(
                        job_name="share_link_expiry", statuses=[DagsterRunStatus.SUCCESS]
                    )
                )
                if r.dagster_run.tags.get("mm/trigger") == "schedule"
            ]
            if done:
                break
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        record = done[0]
        assert record.end_time - record.start_time < 60, "share-link expiry missed its SLA"

        # A run stuck in SendGrid (the stand-in answers after 120 s) when Ctrl-C comes.
        sendgrid.arrived.clear()
        sendgrid.rule = lambda body: Reply(delay=120)
        port_file = (data / "postgres" / "port").read_text().strip()
        with connect(f"postgresql://postgres@127.0.0.1:{port_file}/portal", autocommit=True) as c:
            c.execute(
                "UPDATE portal.share_links SET status = 'active', expires_at = now() - "
                "interval '1 minute' "
                # A link never notified: a notice already sent is never sent again.
                "WHERE id = (SELECT id FROM portal.share_links s WHERE NOT EXISTS ("
                "  SELECT 1 FROM ops.notification_outbox o"
                "   WHERE o.idempotency_key = 'share-link-expired:' || s.id)"
                " ORDER BY id LIMIT 1)"
            )
        selector = {
            "repositoryLocationName": "mm_orchestration",
            "repositoryName": "__repository__",
            "pipelineName": "share_link_expiry",
        }
        launched = graphql(port, LAUNCH, {"p": {"selector": selector, "runConfigData": {}}})
        run_id = launched["launchPipelineExecution"]["run"]["runId"]
        if not sendgrid.arrived.wait(90):
            events = [
                f"{e.dagster_event_type}: {e.message}"[:300] for e in instance.all_logs(run_id)
            ]
            raise AssertionError("\n".join(events[-25:]))
        family = _everything(proc.pid, data)
        instance.dispose()
    finally:
        stop_sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
    _assert_stopped_in_time(proc, family, stop_sent, log)
    sendgrid.close()

    with EmbeddedPostgres(data / "postgres") as server:
        write_home(home, server.url("dagster"))  # as the next `mm-jobs dev` would
        instance = DagsterInstance.from_config(str(home))
        run = instance.get_run_by_id(run_id)
        assert run is not None
        # The stop asked Dagster to terminate the run. An interrupted step of a job with a
        # retry policy (share-link expiry retries once) is retried in the same run, as
        # Dagster does for interrupts; with nothing left to send it then succeeds. Either
        # way the run is not a failure, so no failure sensor ever fires for it.
        kinds = [r.dagster_event_type for r in instance.all_logs(run_id)]
        assert DagsterEventType.RUN_CANCELING in kinds
        assert run.status == DagsterRunStatus.CANCELED or (
            run.status == DagsterRunStatus.SUCCESS and DagsterEventType.STEP_RESTARTED in kinds
        ), (run.status, kinds)
        failed = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        assert failed == []
        instance.dispose()

    # The next start serves again; the run is still CANCELED, and no alert was ever requested.
    proc = start(_args("dev", port), env, tmp_path / "dev-again.log")
    try:
        wait_until_serving(port, proc, tmp_path / "dev-again.log")
        with DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_run_by_id(run_id).status == run.status
            assert instance.get_runs(filters=RunsFilter(job_name="send_alert")) == []
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
