"""Runs started from `mm-jobs run` get what console and scheduled runs get, proven with the
real daemon: the console shows them, a failure is tagged with its one-line reason, two
failures in a row raise one streak alert and the next success one recovery notice."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
from dagster import DagsterInstance

from mm_orchestration.local.topology import Topology
from tests.local_stack import graphql, mm_jobs, sensor_started, wait_for
from tests.sendgrid_server import SendGridRecorder

T = TypeVar("T")

RUN_QUERY = """
query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { status jobName tags { key value } } } }
"""


def _cli(topology: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    return mm_jobs({**topology.process_env}, *args, timeout=180)


def _run_id(proc: subprocess.CompletedProcess[str]) -> str:
    return next(x.split(": ")[1] for x in proc.stdout.splitlines() if x.startswith("run id: "))


def _wait(what: str, check: Callable[[], T | None], logs: Path, timeout: float = 300) -> T:
    return wait_for(what, check, timeout, logs)  # type: ignore[no-any-return]


def _alerts(conn: psycopg.Connection) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT action, details->>'subject' FROM ops.audit_log "
        "WHERE job_name = 'invite-cleanup' ORDER BY id"
    ).fetchall()
    return [(r[0], r[1] or "") for r in rows]


def _console_run(topology: Topology, run_id: str) -> dict:
    request_body = {"query": RUN_QUERY, "variables": {"id": run_id}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{topology.web_port}/graphql",
        data=json.dumps(request_body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]["runOrError"]


def _tagged(run: dict, key: str) -> dict | None:
    return run if any(t["key"] == key for t in run.get("tags", [])) else None


def test_cli_runs_are_in_the_console_and_alert_through_the_daemon(
    topology: Topology, conn: psycopg.Connection, sendgrid: SendGridRecorder
) -> None:
    topology.start_all()
    logs = topology.log_dir
    assert logs is not None
    assert graphql(topology.web_port, "{ version }")
    # The failure sensor sees only runs that end after its first evaluation.
    with DagsterInstance.from_config(str(topology.dagster_home)) as instance:
        _wait(
            "the failure sensor's first evaluation",
            lambda: sensor_started(instance, "job_failure_sensor") or None,
            logs,
            120,
        )

    conn.execute("ALTER TABLE portal.invitations RENAME TO invitations_away")
    failed = [_cli(topology, "run", "invite-cleanup") for _ in range(2)]
    assert [p.returncode for p in failed] == [1, 1], [p.stderr[-2000:] for p in failed]

    # The console shows the CLI's runs, each tagged with its one-line reason.
    for proc in failed:
        shown = _wait(
            "the failure sensor to tag the run",
            lambda proc=proc: _tagged(_console_run(topology, _run_id(proc)), "mm/error"),
            logs,
        )
        assert shown["__typename"] == "Run" and shown["status"] == "FAILURE"
        error = {t["key"]: t["value"] for t in shown["tags"]}["mm/error"]
        assert error.startswith("expire_stale_invitations_op: missing table(s) portal.invitations")

    # Two failures in a row: one alert per run and one streak notice, through send_alert runs.
    def two_failures_and_a_streak() -> list[tuple[str, str]] | None:
        found = _alerts(conn)
        actions = [a for a, _ in found]
        if actions.count("job_failure_alert") == 2 and "job_consecutive_failures" in actions:
            return found
        return None

    alerts = _wait("two failure alerts and one streak alert", two_failures_and_a_streak, logs)
    assert [a for a, _ in alerts].count("job_consecutive_failures") == 1

    # Fixed: the next CLI run succeeds and the streak is closed with one recovery notice.
    conn.execute("ALTER TABLE portal.invitations_away RENAME TO invitations")
    fixed = _cli(topology, "run", "invite-cleanup")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    _wait(
        "the recovery notice",
        lambda: "job_recovery" in [a for a, _ in _alerts(conn)] or None,
        logs,
    )
    time.sleep(2)
    actions = [a for a, _ in _alerts(conn)]
    assert actions.count("job_recovery") == 1 and actions.count("job_consecutive_failures") == 1
    # The dashboard counts the CLI's runs from the same run records.
    from mm_orchestration.monitoring.job_health import collect

    with DagsterInstance.from_config(str(topology.dagster_home)) as instance:
        health = collect(instance)
    (day,) = [w for w in health.day() if w.job == "invite-cleanup"]
    assert day.counts["failed"] == 2 and day.counts["succeeded"] == 1, day

    failure_subjects = [
        subject for action, subject in _alerts(conn) if action == "job_failure_alert"
    ]
    assert all("missing table(s) portal.invitations" in s for s in failure_subjects), (
        failure_subjects
    )
