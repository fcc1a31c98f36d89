"""The production shape, end to end: a gRPC code server, a daemon and a webserver as three
processes on PostgreSQL storage. Real schedule ticks launch share-link expiry through the
run queue; the code server crashes and comes back, the daemon is killed mid-tick and
restarted, and no run is lost or launched twice, no link is missed and no owner is emailed
twice.

Share-link expiry runs every minute here (MM_SCHEDULE_OVERRIDES); every other job is moved
out of the way so that the only runs are the ones under test.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from mm_orchestration.local.topology import Topology
from mm_orchestration.monitoring.attempts import RETRY_NUMBER_TAG, settled, will_be_retried
from mm_orchestration.platform.ledger import WINDOW_TAG
from tests import factories
from tests.local_stack import graphql, wait_for
from tests.sendgrid_server import SendGridRecorder

T = TypeVar("T")
JOB = "share_link_expiry"


LOCATION_QUERY = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
RELOAD = """
mutation { reloadRepositoryLocation(repositoryLocationName: "mm_orchestration") {
  __typename ... on WorkspaceLocationEntry { loadStatus locationOrLoadError { __typename } } } }
"""


def _wait(what: str, check: Callable[[], T | None], timeout: float, topology: Topology) -> T:
    # Twice the time a quiet machine needs: a loaded CI machine is slow, not broken.
    return wait_for(what, check, 2 * timeout, topology.log_dir)  # type: ignore[no-any-return]


def _location_error(port: int) -> str | None:
    """The location's load error as the console shows it, None while it is loaded."""
    graphql(port, RELOAD)
    entries = graphql(port, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    (entry,) = [e for e in entries if e["name"] == "mm_orchestration"]
    location = entry["locationOrLoadError"]
    return location["message"] if location and location["__typename"] == "PythonError" else None


def _runs(instance: DagsterInstance) -> list[Any]:
    return list(instance.get_runs(filters=RunsFilter(job_name=JOB)))


def _for_tick_after(
    instance: DagsterInstance, after: float, status: DagsterRunStatus | None = None
) -> Any:
    """The scheduled run for the first tick later than `after`, once it has `status`: the
    tick's last attempt (a run whose launch died with the daemon fails at run monitoring's
    start timeout, and Dagster's run retry replaces it)."""
    later = [r for r in _runs(instance) if r.tags.get("mm/trigger") == "schedule"]
    later = [r for r in later if tick_of(r) > after]
    if not later:
        return None
    tick = min(tick_of(r) for r in later)
    run = max((r for r in later if tick_of(r) == tick), key=_attempt)
    if run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        assert will_be_retried(settled(instance, run)), run
        return None
    return run if status is None or run.status == status else None


def _attempt(run: Any) -> int:
    return int(run.tags.get(RETRY_NUMBER_TAG, 0))


def _due_link(conn: psycopg.Connection, owner_email: str) -> Any:
    tenant = factories.tenant(conn)
    owner = factories.user(conn, tenant, email=owner_email)
    asset = factories.asset(conn, tenant)
    return factories.share_link(
        conn, tenant, asset, owner, expires_at=datetime.now(UTC) - timedelta(minutes=5)
    )


def _status(conn: psycopg.Connection, link: Any) -> str:
    row = conn.execute("SELECT status FROM portal.share_links WHERE id = %s", [link]).fetchone()
    assert row
    return str(row[0])


def test_ticks_survive_a_code_server_crash_and_a_daemon_restart(
    topology: Topology, conn: psycopg.Connection, sendgrid: SendGridRecorder
) -> None:
    first_link = _due_link(conn, "first@agency.example")
    topology.start_all()
    processes = {name: p.pid for name, p in topology.processes.items()}
    assert len(set(processes.values())) == 3, processes
    instance = DagsterInstance.from_config(str(topology.dagster_home))

    # 1. A real tick launches the job through the queue, and it succeeds.
    first = _wait(
        "the first scheduled run",
        lambda: _for_tick_after(instance, 0, DagsterRunStatus.SUCCESS),
        150,
        topology,
    )
    assert first.tags["mm/trigger"] == "schedule"
    assert _status(conn, first_link) == "expired"

    # 2. The code server crashes (with its process group, as a lost container would). The
    # console says the location is unavailable; what was recorded stays recorded.
    second_link = _due_link(conn, "second@agency.example")
    topology.stop("code-server", sig=signal.SIGKILL)
    error = _wait("the console to show the location unavailable",
                  lambda: _location_error(topology.web_port), 60, topology)  # fmt: skip
    assert "UNAVAILABLE" in error, error
    assert [(r.run_id, r.status) for r in _runs(instance)] == [
        (first.run_id, DagsterRunStatus.SUCCESS)
    ]
    topology.start("code-server")
    loaded = _wait(
        "the location to load again",
        lambda: _location_error(topology.web_port) is None or None,
        60,
        topology,
    )
    assert loaded

    # 3. The next tick launches a run, and the daemon is killed that moment and restarted:
    # the tick's run completes once and the tick is not launched again. Killed after it
    # recorded the run STARTING but before the code server had it, the run has no worker:
    # run monitoring fails it at its start timeout (dagster.yaml) and Dagster retries it.
    launched = _wait(
        "the next tick's run",
        lambda: _for_tick_after(instance, tick_of(first)),
        150,
        topology,
    )
    topology.stop("daemon", sig=signal.SIGKILL)
    topology.start("daemon")
    recovered = _wait(
        "that run to succeed",
        lambda: _for_tick_after(instance, tick_of(first), DagsterRunStatus.SUCCESS),
        150,
        topology,
    )
    assert launched.run_id in (recovered.run_id, recovered.parent_run_id), (launched, recovered)
    assert _status(conn, second_link) == "expired"

    # ...and the schedules carry on under the new daemon.
    third_link = _due_link(conn, "third@agency.example")
    # A tick after the link was made: while the retried run waited out its start timeout,
    # the next minute's run may already have run (and found nothing due).
    made = time.time()
    after_restart = _wait(
        "a tick launched by the restarted daemon",
        lambda: _for_tick_after(instance, max(tick_of(recovered), made), DagsterRunStatus.SUCCESS),
        150,
        topology,
    )
    assert _status(conn, third_link) == "expired"

    # Nothing twice: one run per tick (besides attempts Dagster retried), one ledger success
    # per window, one email per link.
    runs = [r for r in _runs(instance) if not will_be_retried(settled(instance, r))]
    ticks = [r.tags[WINDOW_TAG] for r in runs]
    assert len(ticks) == len(set(ticks)), ticks
    assert {first.run_id, recovered.run_id, after_restart.run_id} <= {r.run_id for r in runs}
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs if r.is_finished), runs
    succeeded = conn.execute(
        "SELECT count(*) FROM ops.job_runs "
        "WHERE job_name = 'share-link-expiry' AND status = 'succeeded'"
    ).fetchone()
    assert succeeded == (sum(r.status == DagsterRunStatus.SUCCESS for r in runs),)
    recipients = sendgrid.accepted_recipients()
    for owner in ("first@agency.example", "second@agency.example", "third@agency.example"):
        assert recipients.count(owner) == 1, recipients


def tick_of(run: Any) -> float:
    """The schedule tick a run was launched for (the ledger's window, in UTC)."""
    return datetime.fromisoformat(run.tags[WINDOW_TAG].replace("Z", "+00:00")).timestamp()
