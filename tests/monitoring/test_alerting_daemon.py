"""Issue 28's alerts end to end, with the real daemon (one stack for every case, at once):

- a job failing every third run crosses its error-rate threshold once and recovers once
  (its first single failure emailed, the ones inside the episode folded into it);
- a schedule whose function raises alerts its job's target once, with its own error,
  though it fails at every tick;
- a schedule whose code location is down at its tick alerts once;
- the rollup, its schedule stopped by hand, left unmaterialised past its freshness (90 s
  with a schedule every minute) alerts once.

Processes: the project's code location (plus the raising schedule) and a second one, each
served by `dagster api grpc`, and `dagster-daemon`. Every alert is a send_alert run the
daemon launches, so each is counted in the audit log and in what SendGrid received.
"""

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from dagster import DagsterInstance, Failure, OpExecutionContext, job, materialize, op

from mm_orchestration.features.analytics.asset import analytics_hourly
from mm_orchestration.local.embedded_pg import free_port
from mm_orchestration.local.supervisor import Command, Supervisor, executable
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.instance import write_home
from tests.local_stack import sensor_started, wait_for
from tests.monitoring.alerting_location import RAISING_ERROR
from tests.sendgrid_server import SendGridRecorder

pytestmark = pytest.mark.stack

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
QUIET = "0 0 1 1 *"


@dataclass
class AlertingStack(Supervisor):
    """Two code servers and the daemon, sharing one DAGSTER_HOME."""

    main_port: int = 0
    other_port: int = 0
    workspace: Path = Path()

    def commands(self) -> dict[str, Command]:
        def grpc(location: str, port: int) -> Command:
            return Command(
                [
                    executable("dagster"),
                    "api",
                    "grpc",
                    "--python-file",
                    str(HERE / f"{location}.py"),
                    "--working-directory",
                    str(ROOT),
                    "--location-name",
                    "mm_orchestration" if location == "alerting_location" else "ticking",
                    "--host",
                    self.host,
                    "--port",
                    str(port),
                ],  # fmt: skip
                ready_port=port,
            )

        return {
            "code-server": grpc("alerting_location", self.main_port),
            "other-code-server": grpc("ticking_location", self.other_port),
            "daemon": Command([executable("dagster-daemon"), "run", "-w", str(self.workspace)]),
        }


@op(config_schema={"fail": bool})
def work(context: OpExecutionContext) -> None:
    if context.op_config["fail"]:
        raise Failure("the invitations table is locked")


@job(tags={"mm/job": "invite-cleanup"})
def flaky() -> None:
    work()


def runs(instance: DagsterInstance, *fails: bool) -> None:
    for fail in fails:
        flaky.execute_in_process(
            instance=instance,
            run_config={"ops": {"work": {"config": {"fail": fail}}}},
            raise_on_error=False,
        )


def audit(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(action, job, subject) of every alert decision, in order."""
    rows = conn.execute(
        "SELECT action, coalesce(job_name, ''), coalesce(details->>'subject', '')"
        " FROM ops.audit_log WHERE actor = 'alerting' ORDER BY id"
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def count(conn: psycopg.Connection, action: str, job: str | None = None) -> int:
    return sum(1 for a, j, _ in audit(conn) if a == action and (job is None or j == job))


@pytest.fixture
def stack(
    tmp_path: Path, database_url: str, dagster_storage: str, sendgrid: SendGridRecorder
) -> Any:
    home = write_home(tmp_path / "dagster_home")
    logs = tmp_path / "logs"
    logs.mkdir()
    main_port, other_port = free_port(), free_port()
    workspace = tmp_path / "workspace.yaml"
    locations = {"mm_orchestration": main_port, "ticking": other_port}
    workspace.write_text(
        "load_from:\n"
        + "".join(
            f"  - grpc_server: {{host: 127.0.0.1, port: {port}, location_name: {name}}}\n"
            for name, port in locations.items()
        )
    )
    overrides = ";".join(
        f"{s.name}={'* * * * *' if s.name == 'analytics-rollup' else QUIET}"
        for s in inventory.INVENTORY
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "SENDGRID_", "MM_", "SENTRY_"))
    }
    env.update(
        DATABASE_URL=database_url,
        MM_ENV="staging",
        MM_SCHEDULE_OVERRIDES=overrides,
        MM_DATA_DIR=str(tmp_path / "mm"),
        SENDGRID_API_KEY="SG.test-key",
        SENDGRID_API_HOST=sendgrid.url,
        SENDGRID_DIGEST_TEMPLATE_ID="d-test",
        # Dagster's freshness daemon every 5 s, not 30 (it only feeds the UI here).
        FRESHNESS_DAEMON_INTERVAL_SECONDS="5",
    )
    stack = AlertingStack(
        dagster_home=home,
        env=env,
        log_dir=logs,
        main_port=main_port,
        other_port=other_port,
        workspace=workspace,
    )
    try:
        yield stack
    finally:
        stack.stop_all()


def _wait(what: str, check: Callable[[], T | None], stack: AlertingStack, timeout: float) -> T:
    return wait_for(what, check, timeout, stack.log_dir)  # type: ignore[no-any-return]


def _schedule_states(instance: DagsterInstance, running: bool = False) -> set[str]:
    return {
        f"{s.repository_selector.location_name}/{s.instigator_name}"
        for s in instance.all_instigator_state()
        if s.instigator_type.value == "SCHEDULE" and (s.is_running or not running)
    }


def test_each_failure_pattern_alerts_its_owner_once(
    stack: AlertingStack, conn: psycopg.Connection, database_url: str, sendgrid: SendGridRecorder
) -> None:
    began = time.monotonic()
    instance = DagsterInstance.from_config(str(stack.dagster_home))
    # The rollup's last materialisation: from here it has 90 s (a schedule every minute).
    hour = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d-%H:00")
    db = PortalDatabase(url=database_url)
    assert materialize(
        [analytics_hourly], partition_key=hour, instance=instance, resources={"portal_db": db}
    ).success
    db.close()
    stack.start("code-server")
    stack.start("other-code-server")
    # Its schedule is stopped by hand (before the daemon ever ticks it).
    stopped = subprocess.run(
        [executable("dagster"), "schedule", "stop", "analytics_rollup_schedule",
         "-w", str(stack.workspace), "-l", "mm_orchestration"],
        env=stack.process_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    stack.start("daemon")
    # The daemon's first scheduler pass records the running schedules of both locations.
    _wait(
        "the daemon to see both locations' schedules",
        lambda: "ticking/share_link_expiry_schedule" in _schedule_states(instance, running=True),
        stack,
        120,
    )
    assert "mm_orchestration/analytics_rollup_schedule" not in _schedule_states(
        instance, running=True
    )
    # A run-status sensor starts from the events of its first evaluation (earlier ones
    # are not its business): the failures come after it.
    _wait(
        "the failure sensor's first evaluation",
        lambda: sensor_started(instance, "job_failure_sensor"),
        stack,
        120,
    )
    # The second location goes down before its next tick, and stays down: the daemon
    # notices at once and records no tick (nor catches up when it is back).
    stack.stop("other-code-server")

    # A job failing every third run: its first failure is emailed on its own...
    runs(instance, False, False, True)
    _wait("the first failure's alert", lambda: count(conn, "job_failure_alert"), stack, 120)
    # ...the second crosses 20 % (2 of 6), opening the episode it is folded into, and the
    # third is folded too (the episode's own alert goes when error_rate_sensor looks).
    runs(instance, False, False, True, False, False, True)
    _wait("the failures folded", lambda: count(conn, "alert_folded") >= 2 or None, stack, 120)

    # Fixed: enough successes bring it to 3 of 30 (10 %): one recovery notice.
    runs(instance, *([False] * 21))
    _wait("the recovery notice", lambda: count(conn, "job_error_rate_recovered"), stack, 120)

    def every_alert() -> list[tuple[str, str, str]] | None:
        found = audit(conn)
        actions = [a for a, _, _ in found]
        ticks = actions.count("schedule_tick_alert")
        return found if ticks >= 2 and "asset_stale_alert" in actions else None

    _wait("the tick and freshness alerts", every_alert, stack, 180)
    # The tick and freshness sensors' interval (15 s) after the last alert (the error
    # rate's came long before): nothing is said twice.
    (last,) = conn.execute(
        "SELECT extract(epoch FROM now() - max(occurred_at)) FROM ops.audit_log"
    ).fetchone()
    time.sleep(max(0.0, 16 - float(last)))

    found = audit(conn)
    actions = [a for a, _, _ in found]
    assert actions.count("job_failure_alert") == 1, found
    assert actions.count("alert_folded") == 2, found
    assert actions.count("job_error_rate_alert") == 1, found
    assert actions.count("job_error_rate_recovered") == 1, found
    assert actions.count("schedule_tick_alert") == 2, found
    assert actions.count("asset_stale_alert") == 1, found

    subjects = {s for a, _, s in found}
    crossing = next(s for a, _, s in found if a == "job_error_rate_alert")
    # 2 of 6 or 3 of 9, depending on when it was opened: one run in three either way.
    assert crossing.startswith("invite-cleanup is failing too often: ")
    assert crossing.endswith(" runs in 24 hours (33 %)")
    raising = next(s for a, j, s in found if a == "schedule_tick_alert" and j)
    assert raising.startswith("tenant_health_raising_schedule: the tick at ")
    outage = next(s for a, j, s in found if a == "schedule_tick_alert" and not j)
    assert outage.startswith("Code location ticking: scheduled ticks did not run")
    assert any(s.startswith("ops/analytics_hourly is stale") for s in subjects)

    # What SendGrid received: each of those once, to the job's own target.
    mail = [
        (
            person["custom_args"]["idempotency_key"],
            person["to"][0]["email"],
            person.get("subject") or request.body.get("subject"),
            " ".join(c["value"] for c in request.body.get("content", [])),
        )
        for request in sendgrid.mail_requests
        if request.status == 202
        for person in request.body["personalizations"]
    ]
    keys = [key for key, *_ in mail]
    assert len(keys) == len(set(keys)) == len(found) - 2  # every decision but the folded two
    ((subject, body),) = [(s, b) for _, to, s, b in mail if to.startswith("admin@")]
    assert subject == raising and RAISING_ERROR in body
    assert time.monotonic() - began < 300
