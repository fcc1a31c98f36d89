"""`mm-jobs` in a subprocess, against a real DAGSTER_HOME backed by PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RetryPolicy,
    job,
    op,
)
from psycopg import sql

from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.ledger import ledgered
from tests import factories as f
from tests.conftest import create_database, drop_database
from tests.local_stack import MM_JOBS, mm_jobs


def test_run_share_link_expiry_is_recorded_in_the_instance(dagster_env, conn, tmp_path):
    t = f.tenant(conn)
    link = f.share_link(
        conn,
        t,
        f.asset(conn, t),
        f.user(conn, t, email="jack@bondi.example"),
        datetime.now(UTC) - timedelta(minutes=3),
    )
    proc = mm_jobs(dagster_env, "run", "share-link-expiry", "--actor", "reliability-oncall")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = next(
        line.split(": ")[1] for line in proc.stdout.splitlines() if line.startswith("run id: ")
    )
    assert (
        conn.execute("SELECT status FROM portal.share_links WHERE id = %s", [link]).fetchone()[0]
        == "expired"
    )
    # No SendGrid key: the email is a file, and the outbox says sent.
    emails = list((tmp_path / "data" / "mail").glob("*.eml"))
    assert len(emails) == 1 and "jack@bondi.example" in emails[0].read_text()
    ledger = conn.execute("SELECT run_id, status, trigger, actor FROM ops.job_runs").fetchone()
    assert ledger == (run_id, "succeeded", "cli", "reliability-oncall")
    # Audited by the command itself, before the run (the entry then says how it ended).
    entry = conn.execute(
        "SELECT actor, action, job_name, run_id, target, outcome, details->>'source'"
        " FROM ops.audit_log WHERE action = 'launch_run'"
    ).fetchone()
    assert entry == (
        "reliability-oncall",
        "launch_run",
        "share-link-expiry",
        run_id,
        "share-link-expiry",
        "succeeded",
        "cli",
    )
    # Who really ran it, beside the --actor anyone may type.
    (os_user,) = conn.execute(
        "SELECT details->>'os_user' FROM ops.audit_log WHERE action = 'launch_run'"
    ).fetchone()
    assert os_user
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == DagsterRunStatus.SUCCESS
        assert run.job_name == "share_link_expiry"
        assert run.tags["mm/actor"] == "reliability-oncall"
        assert instance.run_coordinator.__class__.__name__ == "PlainValuesRunCoordinator"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled


def test_dagster_name_and_force_are_accepted(dagster_env, conn):
    proc = mm_jobs(dagster_env, "run", "share_link_expiry", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("actor", ["ann\nforged line", "ann\x1b[31m", "x" * 255, " "])
def test_an_actor_that_is_not_one_visible_line_is_refused(actor):
    """--actor is what the audit shows as the person: a newline or a control character
    could forge a line of a listing, so the command stops before anything happens."""
    from mm_orchestration.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["run", "share-link-expiry", "--actor", actor])
    assert stopped.value.code == 2


def test_unknown_job_lists_known_ones(dagster_env):
    proc = mm_jobs(dagster_env, "run", "share-links")
    assert proc.returncode == 2
    assert "unknown job (the name is not shown)" in proc.stderr
    assert "share-link-expiry" in proc.stderr and "share-links" not in proc.stderr


def test_bad_setting_fails_with_its_name(dagster_env):
    proc = mm_jobs({**dagster_env, "MM_TIMEZONE": "Mars/Olympus"}, "list")
    assert proc.returncode == 2 and "MM_TIMEZONE" in proc.stderr


def test_a_malformed_secret_setting_is_refused_without_showing_it(dagster_env):
    """SENTRY_DSN holding something that is no DSN (a key pasted alone, another secret):
    the command names the setting and what a DSN looks like, and its whole output holds
    nothing of the value."""
    for value in ("key-canary-777", "https://key:canary-pw@sentry.example:99999/1"):
        proc = mm_jobs({**dagster_env, "SENTRY_DSN": value}, "run", "invite-cleanup")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "SENTRY_DSN is not a Sentry DSN" in proc.stderr
        assert "https://<public key>@<host>/<project id>" in proc.stderr
        assert "canary" not in (proc.stdout + proc.stderr).lower()


def test_list_shows_every_job_with_schedule_and_next_tick(dagster_env):
    proc = mm_jobs({**dagster_env, "MM_ENV": "staging"}, "list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 + len(inventory.INVENTORY)  # the header and a line per job
    expiry = next(line for line in lines if line.startswith("share-link-expiry "))
    assert "*/5 * * * *" in expiry and "Australia/Sydney" in expiry and "60s" in expiry


def test_seed_demo_fills_every_contract_table(dagster_env, conn):
    proc = mm_jobs(dagster_env, "seed-demo", "--scale", "2")
    assert proc.returncode == 0, proc.stderr
    for table in (
        "tenants",
        "users",
        "projects",
        "milestones",
        "tasks",
        "media_assets",
        "share_links",
        "share_link_tokens",
        "invitations",
        "email_suppressions",
        "events",
        "mux_webhook_dlq",
    ):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("portal", table))
        count = conn.execute(query).fetchone()[0]
        assert count > 0, table
    due = conn.execute(
        "SELECT count(*) FROM portal.share_links WHERE status = 'active' AND expires_at <= now()"
    ).fetchone()[0]
    old_invites = conn.execute(
        "SELECT count(*) FROM portal.invitations WHERE status = "
        "'pending' AND created_at < now() - interval '72 hours'"
    ).fetchone()[0]
    reasons = {r[0] for r in conn.execute("SELECT DISTINCT reason FROM portal.email_suppressions")}
    assert due > 0 and old_invites > 0
    assert reasons == {"bounce", "spam_report", "unsubscribe", "invalid"}
    assert conn.execute("SELECT count(*) FROM portal.tenants").fetchone()[0] == 12


def test_definitions_validate(project_root, tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            str(project_root / "workspace.yaml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Validation successful" in proc.stderr + proc.stdout


# -- one instance, and status that means what it says ---------------------------------


def _run_id(stdout: str) -> str:
    return next(line.split(": ")[1] for line in stdout.splitlines() if line.startswith("run id: "))


def test_cli_runs_land_in_the_instance_dev_writes_never_in_the_portal_database(
    pg_server, database_url, conn, tmp_path
):
    """What `make dev` writes (DAGSTER_HOME under MM_DATA_DIR, storage in the file) is what
    `mm-jobs run` in another terminal opens, with no DAGSTER_* variable set."""
    from mm_orchestration.platform.instance import write_home

    storage = create_database(pg_server, template=None)
    data = tmp_path / "data"
    write_home(data / "dagster_home", pg_server.url(storage))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "MM_"))}
    env.update(DATABASE_URL=database_url, MM_DATA_DIR=str(data))
    try:
        proc = mm_jobs(env, "run", "invite-cleanup")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.splitlines()[-1] == "invite-cleanup: succeeded"
        run_id = _run_id(proc.stdout)
        with psycopg_connect(pg_server.url(storage)) as dagster_db:
            found = dagster_db.execute("SELECT count(*) FROM runs WHERE run_id = %s", [run_id])
            assert found.fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('public.runs')").fetchone() == (None,)
    finally:
        drop_database(pg_server, storage)


def test_a_dagster_home_storing_runs_in_the_portal_database_is_refused(
    pg_server, database_url, conn, tmp_path
):
    from mm_orchestration.platform.instance import write_home

    home = write_home(tmp_path / "home", database_url)  # the portal's own database
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "MM_"))}
    env.update(DATABASE_URL=database_url, DAGSTER_HOME=str(home), MM_DATA_DIR=str(tmp_path))
    proc = mm_jobs(env, "run", "invite-cleanup")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "DATABASE_URL" in proc.stderr and "portal database" in proc.stderr
    # Refused before Dagster opened the storage: none of its tables were created.
    assert conn.execute("SELECT to_regclass('public.runs')").fetchone() == (None,)


def test_a_dagster_home_without_dagster_yaml_or_its_variables_is_refused(dagster_env, tmp_path):
    empty = tmp_path / "empty-home"
    empty.mkdir()
    proc = mm_jobs({**dagster_env, "DAGSTER_HOME": str(empty)}, "run", "invite-cleanup")
    assert proc.returncode == 2 and "has no dagster.yaml" in proc.stderr
    env = {k: v for k, v in dagster_env.items() if k != "DAGSTER_DATABASE_URL"}
    proc = mm_jobs(env, "run", "invite-cleanup")
    assert proc.returncode == 2 and "DAGSTER_DATABASE_URL" in proc.stderr


def test_a_skipped_run_says_skipped_with_the_run_that_holds_the_window(dagster_env, conn):
    tick = ("--window", "2026-11-29T21:00:00Z")  # the schedule's 08:00 Sydney tick
    first = mm_jobs(dagster_env, "run", "notification-digest", *tick)
    assert first.returncode == 0, first.stderr[-3000:]
    second = mm_jobs(dagster_env, "run", "notification-digest", *tick)
    assert second.returncode == 3, second.stdout + second.stderr[-3000:]
    line = second.stdout.splitlines()[-1]
    held = _run_id(first.stdout)
    assert line == f"notification-digest: skipped: window already succeeded in run {held}"
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(_run_id(second.stdout))
        assert run.tags["mm/outcome"] == "skipped"
        assert run.tags["mm/window_held_by"] == _run_id(first.stdout)


def test_a_failed_run_leads_with_the_ops_own_message(dagster_env, conn):
    conn.execute("DROP TABLE portal.invitations")
    proc = mm_jobs(dagster_env, "run", "invite-cleanup")
    assert proc.returncode == 1
    events = [json.loads(x)["event"] for x in proc.stderr.splitlines()]  # JSON lines
    (line,) = [x for x in events if x.startswith("invite-cleanup: FAILED")]
    assert line.startswith(
        "invite-cleanup: FAILED: expire_stale_invitations_op: missing table(s) portal.invitations"
    ), line


def psycopg_connect(url):
    from mm_orchestration.platform.db import connect

    return connect(url, autocommit=True)


# -- stopping `mm-jobs run` ------------------------------------------------------------


def _started_cli_run(instance_env, proc, seconds=60):
    """The run an `mm-jobs run` process is executing, once Dagster records it STARTED."""
    import time

    deadline = time.monotonic() + seconds
    with DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            runs = [
                r
                for r in instance.get_runs()
                if r.tags.get("mm/cli_pid") == str(proc.pid)
                and r.status == DagsterRunStatus.STARTED
            ]
            if runs:
                return runs[0]
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.3)
    raise AssertionError("the CLI run never started")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_stopping_mm_jobs_run_cancels_its_run_at_once_without_a_retry(
    dagster_env, conn, database_url, sig
):
    """A run blocked on a lock (a job whose op retries once): Ctrl-C, SIGTERM or SIGHUP end
    it CANCELED in Dagster and in the ledger, exit 4, and no retry starts."""
    import signal as signals
    import time

    from mm_orchestration.platform.db import connect

    with connect(database_url) as locker:
        locker.execute("LOCK TABLE portal.email_suppressions IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [MM_JOBS, "run", "notification-suppression-cleanup"],
            env=dagster_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        run = _started_cli_run(dagster_env, proc)
        time.sleep(1)  # inside the op, waiting on the lock
        sent = time.monotonic()
        proc.send_signal(getattr(signals, sig))
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
        locker.rollback()
    assert proc.returncode == 4, (out, err)
    assert took < 10, took
    assert f"CANCELED: stopped by {sig}" in err
    with DagsterInstance.get() as instance:
        ended = instance.get_run_by_id(run.run_id)
        assert ended.status == DagsterRunStatus.CANCELED
        kinds = {r.dagster_event_type for r in instance.all_logs(run.run_id)}
    assert (
        DagsterEventType.STEP_RESTARTED not in kinds and DagsterEventType.RUN_FAILURE not in kinds
    )
    ledger = conn.execute(
        "SELECT status FROM ops.job_runs WHERE run_id = %s", [run.run_id]
    ).fetchall()
    assert ledger == [("canceled",)]
    # The audit entry written before the run started ends too (not "allowed" for ever).
    entries = conn.execute(
        "SELECT outcome, details->'result'->>'summary' FROM ops.audit_log WHERE run_id = %s",
        [run.run_id],
    ).fetchall()
    assert entries == [("canceled", f"mm-jobs run was stopped ({sig})")]


def test_a_cli_run_whose_process_died_is_canceled_when_a_stack_starts(
    dagster_env, conn, database_url
):
    """SIGKILL leaves a CLI run STARTED (it would hold its job's queue slot for good); the
    next local stack to start marks it canceled."""
    from pathlib import Path

    from mm_orchestration.local.supervisor import cancel_runs_in_flight
    from mm_orchestration.platform.db import connect

    with connect(database_url) as locker:
        locker.execute("LOCK TABLE portal.invitations IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [MM_JOBS, "run", "invite-cleanup"], env=dagster_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        run = _started_cli_run(dagster_env, proc)
        proc.kill()
        # wait(), not communicate(): a log-capturing child of the run may keep the pipes
        # open a while after its parent died, and the pipes' end is not what is tested.
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
        locker.rollback()
    home = Path(dagster_env["DAGSTER_HOME"])
    assert cancel_runs_in_flight(home, dagster_env, terminate=False) == [run.run_id]
    with DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED
    running = conn.execute(
        "SELECT count(*) FROM ops.job_runs WHERE run_id = %s AND status = 'running'", [run.run_id]
    ).fetchone()
    assert running == (0,)
    outcome = conn.execute(
        "SELECT outcome FROM ops.audit_log WHERE run_id = %s", [run.run_id]
    ).fetchall()
    assert outcome == [("canceled",)]


def test_bad_partitions_and_an_unreachable_storage_are_named(dagster_env, pg_server):
    """A partition the job does not have is refused by the rule the console and the run
    coordinator judge by: why, and which keys are valid in which form (an hour to come was
    run and wrote nothing; text that is no key is not quoted back)."""
    proc = mm_jobs(dagster_env, "run", "analytics-rollup", "--partition", "garbage")
    assert proc.returncode == 2
    assert (
        "--partition: the partition given is not one of analytics-rollup's: it is not in the "
        "form YYYY-MM-DD-HH:MM (the value is not shown); choose one of its hourly partitions "
        "from 2025-01-01-00:00 to the latest, "
    ) in proc.stderr, proc.stderr
    assert "garbage" not in proc.stderr
    proc = mm_jobs(dagster_env, "run", "residency-report", "--partition", "2099-01-05")
    assert proc.returncode == 2
    assert "2099-01-05 is after the latest partition" in proc.stderr, proc.stderr
    assert "YYYY-MM-DD, each week's Monday, Australia/Sydney" in proc.stderr
    proc = mm_jobs(dagster_env, "run", "share-link-expiry", "--partition", "x")
    assert proc.returncode == 2 and "share-link-expiry has no partitions" in proc.stderr
    from mm_orchestration.local.embedded_pg import free_port

    elsewhere = f"host=127.0.0.1 port={free_port()} user=postgres dbname=dagster"
    proc = mm_jobs({**dagster_env, "DAGSTER_DATABASE_URL": elsewhere}, "run", "invite-cleanup")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Dagster's storage" in proc.stderr and "does not answer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_storage_that_holds_the_portal_schemas_is_refused_however_it_is_spelled(
    database_url, conn
):
    """Names can hide a server (a pooler's host name, an address): the storage server
    itself says it is the portal database, and Dagster's tables are never created."""
    from mm_orchestration.platform.instance import check_storage_server
    from mm_orchestration.platform.settings import SettingsError
    from mm_orchestration.platform.storage import sqlalchemy_url

    with pytest.raises(SettingsError, match="holds the portal's schemas"):
        check_storage_server(sqlalchemy_url(database_url))
    assert conn.execute("SELECT to_regclass('public.runs')").fetchone() == (None,)


# -- a database or a service that cannot be used ----------------------------------------

CANARY = "pw-canary-4417"


def _one_refusal(stderr: str, where: str) -> str:
    """The command's one JSON refusal line (exit code 2 in it), its message."""
    from tests.json_lines import json_lines

    (line,) = [x for x in json_lines(stderr, where) if x["logger"] == "mm-jobs"]
    assert (line["level"], line["exitCode"]) == ("error", 2), line
    return str(line["event"])


def _database_commands(tmp_path: Path) -> list[list[str]]:
    """Every `mm-jobs` command that works on the portal database (`run`, `console`, `dev`,
    `prod-local` and `serve-reports` are tried in their own processes)."""
    return [
        ["migrate"], ["migrate", "--with-portal-schema"], ["seed-demo"],
        ["grants", "mm_jobs"], ["grants", "mm_jobs", "--apply"],
        ["outbox", "list"], ["outbox", "resend", "--kind", "digest", "--since", "2026-11-01"],
        ["audit", "verify"], ["audit", "head"], ["digest", "preview", "ann@agency.example"],
        ["evidence", "export", "--period", "2026-Q4", "--output", str(tmp_path / "e.zip")],
        ["dlq", "list"], ["dlq", "show", "1"], ["dlq", "requeue", "1"],
        ["dlq", "discard", "1", "--reason", "duplicate"],
    ]  # fmt: skip


# How a refusal tells the three apart (db.unreachable), with the advice that fits each.
VERDICTS = {
    "unreachable": ("does not answer", "host and port are right"),
    "credentials": ("refused the credentials", "user and password"),
    "database": ("has no such database", "database name"),
}


@pytest.mark.parametrize("refusal", ["unreachable", "credentials", "database"])
def test_a_database_that_cannot_be_used_is_refused_naming_its_setting_by_every_command(
    refusal, pg_server, tmp_path, monkeypatch, capsys
):
    """DATABASE_URL naming a server that does not answer (a stopped database, a wrong port),
    that refuses the credentials (an unknown role) or that has no such database: every
    command stops with one JSON line naming DATABASE_URL, which of the three it is, what the
    server said and the advice that fits, exit 2, never the password and never a traceback
    (`run` exited 1 with psycopg's OperationalError from its audit entry; every refusal
    said "cannot be used" and told to check everything)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mm_orchestration.cli import main
    from mm_orchestration.features.evidence.keys import private_text
    from mm_orchestration.local.embedded_pg import free_port

    user, db = "nosuchrole", "portal"
    if refusal == "unreachable":
        server, said = f"127.0.0.1:{free_port()}", "Connection refused"
    elif refusal == "credentials":
        server, said = f"{pg_server.host}:{pg_server.port}", 'role "nosuchrole" does not exist'
    else:
        server, user, db = f"{pg_server.host}:{pg_server.port}", "postgres", "nosuchdb"
        said = 'database "nosuchdb" does not exist'
    url = f"postgresql://{user}:{CANARY}@{server}/{db}"
    verdict, advice = VERDICTS[refusal]
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MM_EVIDENCE_SIGNING_KEY", private_text(Ed25519PrivateKey.generate()))
    for argv in _database_commands(tmp_path):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        event = _one_refusal(err, " ".join(argv))
        where = f"DATABASE_URL: the database (database {db} as {user} on {server}) {verdict}: "
        assert event.startswith(where), event
        assert said in event and f"DATABASE_URL's {advice}" in event, event
        assert CANARY not in out + err and "Traceback" not in err, argv


def test_run_and_the_servers_refuse_a_database_that_cannot_be_used(dagster_env, pg_server):
    """The reported case, `mm-jobs run` against an unreachable DATABASE_URL, and the
    commands that start servers on it (the console, the download server, the local stacks
    with DATABASE_URL set): each refuses in one JSON line naming it, exit 2."""
    from mm_orchestration.local.embedded_pg import free_port

    url = f"postgresql://jobs:{CANARY}@127.0.0.1:{free_port()}/portal"
    env = {
        **dagster_env, "DATABASE_URL": url, "MM_CONSOLE_AUTH": "local",
        "MM_REPORTS_PASSWORD": "downloads-password-0123456789",
    }  # fmt: skip
    for argv in (
        ["run", "invite-cleanup"],
        ["console", "--port", str(free_port())],
        ["serve-reports", "--port", str(free_port())],
        ["dev", "--port", str(free_port()), "--grpc-port", str(free_port())],
    ):
        proc = mm_jobs(env, *argv)
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        event = _one_refusal(proc.stderr, " ".join(argv))
        assert event.startswith("DATABASE_URL: the database (database portal as jobs on"), event
        assert "Connection refused" in event
        assert CANARY not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_run_refuses_a_direct_url_that_cannot_be_reached_before_the_run_starts(dagster_env, conn):
    """DATABASE_DIRECT_URL (the ledger's session lock) that does not answer, beside a good
    DATABASE_URL: `mm-jobs run` took 15 s, retried the step, exited 1 with only "Exceeded
    max_retries of 1" and sent a failure alert. It is checked before the run starts, like
    every database the job uses: one JSON line naming it and libpq's reason, exit 2, no
    run, no ledger row, no email."""
    from mm_orchestration.local.embedded_pg import free_port

    direct = f"postgresql://jobs:{CANARY}@127.0.0.1:{free_port()}/portal"
    proc = mm_jobs({**dagster_env, "DATABASE_DIRECT_URL": direct}, "run", "share-link-expiry")
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    event = _one_refusal(proc.stderr, "run with DATABASE_DIRECT_URL")
    assert event.startswith(
        "DATABASE_DIRECT_URL: the database (database portal as jobs on 127.0.0.1:"
    ), event
    assert "does not answer: " in event and "Connection refused" in event, event
    assert CANARY not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert "run id" not in proc.stdout
    assert conn.execute("SELECT count(*) FROM ops.job_runs").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM ops.notification_outbox").fetchone() == (0,)
    with DagsterInstance.from_config(dagster_env["DAGSTER_HOME"]) as instance:
        assert instance.get_runs() == []


@op(retry_policy=RetryPolicy(max_retries=1, delay=0))
def claim_a_window(context, portal_db: PortalDatabase) -> None:
    """What every ledgered job's op does first: claim its window (the session lock)."""
    with ledgered(context, portal_db, "invite-cleanup", ["ops.job_runs"]):
        pass


@job
def ledgered_job() -> None:
    claim_a_window()


def test_a_direct_url_that_cannot_be_reached_fails_a_scheduled_step_naming_it(database_url):
    """Inside a run (a schedule's, a retry's), the ledger's session on DATABASE_DIRECT_URL
    failing used to be summed up, in the run list, the CLI and the failure alert, as
    "Exceeded max_retries of 1", psycopg's reason only in a traceback: the step now fails
    naming DATABASE_DIRECT_URL, where it points and libpq's reason, after its retries."""
    from mm_orchestration.local.embedded_pg import free_port
    from mm_orchestration.monitoring.run_status import failure_summary
    from mm_orchestration.platform.ledger import WINDOW_TAG

    direct = f"postgresql://jobs:{CANARY}@127.0.0.1:{free_port()}/portal"
    db = PortalDatabase(url=database_url, direct_url=direct)
    try:
        with DagsterInstance.ephemeral() as instance:
            result = ledgered_job.execute_in_process(
                resources={"portal_db": db},
                instance=instance,
                tags={WINDOW_TAG: "2026-11-30T08:00:00Z", "dagster/schedule_name": "s"},
                raise_on_error=False,
            )
            assert not result.success
            summary = failure_summary(instance, result.run_id)
    finally:
        db.close()
    assert summary.startswith(
        "claim_a_window: psycopg.OperationalError: DATABASE_DIRECT_URL: the database "
        "(database portal as jobs on 127.0.0.1:"
    ), summary
    assert "does not answer: " in summary and "Connection refused" in summary, summary
    assert "max_retries" not in summary and CANARY not in summary


def _storage_refusal(env: dict[str, str], *argv: str) -> str:
    proc = mm_jobs(env, *argv)
    assert proc.returncode == 2, (argv, proc.stdout, proc.stderr[-3000:])
    event = _one_refusal(proc.stderr, " ".join(argv))
    assert CANARY not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    return event


def test_run_and_the_servers_refuse_a_dagster_storage_that_cannot_be_used_naming_it(
    dagster_env, pg_server, tmp_path
):
    """DAGSTER_DATABASE_URL with an unknown role: `run`, `console` and `dev` said "Dagster's
    storage (database 'dagster' on localhost:PORT, from dagster.yaml in DAGSTER_HOME) does
    not answer: ... role does not exist. Is the local stack (`make dev`) running?": not the
    variable, not the host as given, the wrong verdict and the wrong advice. Now the one
    wording of DATABASE_URL's refusals: the variable, the host as given, what failed and
    what to check, never the password; the local stack's hint only for its own server."""
    from mm_orchestration.local.embedded_pg import free_port
    from mm_orchestration.platform.instance import write_home

    port = pg_server.port
    storage = f"postgresql://nosuchuser:{CANARY}@127.0.0.1:{port}/dagster"
    env = {**dagster_env, "DAGSTER_DATABASE_URL": storage, "MM_CONSOLE_AUTH": "local"}
    for argv in (
        ["run", "share-link-expiry"],
        ["console", "--port", str(free_port())],
        ["dev", "--port", str(free_port()), "--grpc-port", str(free_port())],
    ):
        event = _storage_refusal(env, *argv)
        assert event.startswith(
            "DAGSTER_DATABASE_URL (Dagster's storage, read by dagster.yaml in DAGSTER_HOME): the "
            f"database (database dagster as nosuchuser on 127.0.0.1:{port}) refused the "
            'credentials: connection to server at "127.0.0.1", port '
        ), event
        assert 'role "nosuchuser" does not exist' in event, event
        assert "Check DAGSTER_DATABASE_URL's user and password" in event, event
        assert "localhost" not in event and "make dev" not in event, event

    missing = f"postgresql://postgres:{CANARY}@127.0.0.1:{port}/nosuchstorage"
    event = _storage_refusal({**env, "DAGSTER_DATABASE_URL": missing}, "run", "invite-cleanup")
    assert "(database nosuchstorage as postgres on 127.0.0.1:" in event, event
    assert ") has no such database: " in event and "make dev" not in event, event

    gone = f"postgresql://jobs:{CANARY}@127.0.0.1:{free_port()}/dagster"
    event = _storage_refusal({**env, "DAGSTER_DATABASE_URL": gone}, "run", "invite-cleanup")
    assert event.startswith("DAGSTER_DATABASE_URL (Dagster's storage"), event
    assert ") does not answer: " in event and "DAGSTER_DATABASE_URL's host and port" in event
    assert "make dev" not in event, event

    # The instance `make dev` writes (its embedded server's storage in the file): a server
    # that does not answer is the local stack's, and the hint says so.
    local = write_home(
        tmp_path / "local-home", f"postgresql://postgres@127.0.0.1:{free_port()}/dagster"
    )
    event = _storage_refusal({**env, "DAGSTER_HOME": str(local)}, "run", "invite-cleanup")
    assert event.startswith(
        "Dagster's storage (dagster.yaml in DAGSTER_HOME): the database (database dagster as "
        "postgres on 127.0.0.1:"
    ), event
    assert ") does not answer: " in event and "is the local stack (`make dev`) running?" in event


def test_a_report_store_that_cannot_be_reached_is_refused_naming_its_settings(
    database_url, tmp_path, monkeypatch, capsys
):
    """`evidence export` keeps its bundle in the report store: an S3 endpoint that does not
    answer is refused naming MM_REPORTS_S3_BUCKET and MM_REPORTS_S3_ENDPOINT (exit 2),
    never the secret key, instead of botocore's traceback."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mm_orchestration.cli import main
    from mm_orchestration.features.evidence.keys import private_text
    from mm_orchestration.local.embedded_pg import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    for name, value in {
        "DATABASE_URL": database_url, "MM_DATA_DIR": str(tmp_path / "data"),
        "MM_EVIDENCE_SIGNING_KEY": private_text(Ed25519PrivateKey.generate()),
        "MM_REPORTS_S3_BUCKET": "mm-reports", "MM_REPORTS_S3_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": CANARY,
        "MM_HTTP_CONNECT_TIMEOUT": "1", "MM_HTTP_READ_TIMEOUT": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    argv = ["evidence", "export", "--period", "2026-Q4", "--output", str(tmp_path / "e.zip")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    event = _one_refusal(err, "evidence export")
    assert "s3://mm-reports (MM_REPORTS_S3_BUCKET, at MM_REPORTS_S3_ENDPOINT" in event, event
    assert "cannot be reached" in event and CANARY not in out + err


def test_a_partitioned_run_from_any_other_door_is_refused_before_it_is_queued(dagster_env):
    """`dagster job launch` (neither the console nor mm-jobs): the run coordinator fails a
    run of residency_report without a partition, or for a week to come, before it is
    queued, saying why in its log; a run of a week it has is queued."""
    from dagster import RunsFilter

    launch = [str(Path(sys.executable).with_name("dagster")), "job", "launch",
              "-m", "mm_orchestration", "-j", "residency_report"]  # fmt: skip
    weeks = {"none": None, "ahead": "2099-01-05", "past": "2026-11-23"}
    for week in weeks.values():
        tags = ["--tags", json.dumps({"dagster/partition": week})] if week else []
        done = subprocess.run([*launch, *tags], env=dagster_env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    with DagsterInstance.get() as instance:
        runs = {
            r.tags.get("dagster/partition"): r
            for r in instance.get_runs(filters=RunsFilter(job_name="residency_report"))
        }
        assert set(runs) == set(weeks.values())
        assert runs["2026-11-23"].status == DagsterRunStatus.QUEUED
        for week, why in (
            (None, "residency_report is partitioned: a run needs a partition"),
            ("2099-01-05", "the partition given is not one of residency_report's: 2099-01-05 "
             "is after the latest partition"),
        ):  # fmt: skip
            assert runs[week].status == DagsterRunStatus.FAILURE
            said = " ".join(e.message or "" for e in instance.all_logs(runs[week].run_id))
            assert f"refused before it was queued: {why}" in said, said
