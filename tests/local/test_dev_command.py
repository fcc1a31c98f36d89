"""`mm-jobs dev` (what `make dev` runs) and `mm-jobs prod-local` (`make prod-local`):
embedded PostgreSQL, demo data, the console with its schedules running, any of its
processes killed and back by itself, and Ctrl-C leaving nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from mm_orchestration.local.claims import Claim
from mm_orchestration.local.embedded_pg import free_port
from tests.json_lines import json_lines
from tests.local_stack import graphql, mm_jobs, own_env, start, wait_until_serving

SCHEDULES_QUERY = """
query { repositoriesOrError { ... on RepositoryConnection { nodes {
  name schedules { name cronSchedule executionTimezone scheduleState { status } } } } } }
"""


def test_dev_starts_everything_refuses_a_second_start_and_ctrl_c_stops_everything(tmp_path):
    """`mm-jobs dev` starts every process, its schedules running, with demo data; Ctrl-C
    stops them all.

    A second `mm-jobs dev` in the folder of a running one used to stop its PostgreSQL as
    "left running", then rewrite its instance's dagster.yaml, cancel its runs in flight and
    delete its pid file before failing on the console's port, leaving its processes on a
    dead database. A second `dev` or `prod-local` in the same data folder, or with another
    data folder on the same DAGSTER_HOME, is now refused before it touches anything, naming
    the running stack and what to do; the stack runs on untouched. Only the stack's own
    process holds its claims (none of its servers: a killed stack must leave none held)."""
    port = free_port()
    data = tmp_path / "mm"
    log = tmp_path / "dev.log"
    home = data / "dagster_home"
    proc = start(
        ["dev", "--port", str(port), "--reports-port", str(free_port())], own_env(data), log
    )
    try:
        wait_until_serving(port, proc, log)
        nodes = graphql(port, SCHEDULES_QUERY)["repositoriesOrError"]["nodes"]
        schedules = {s["name"]: s for node in nodes for s in node["schedules"]}
        expiry = schedules["share_link_expiry_schedule"]
        assert expiry["scheduleState"]["status"] == "RUNNING"
        assert expiry["executionTimezone"] == "Australia/Sydney"
        assert (data / "postgres" / "data" / "PG_VERSION").exists()
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        assert "demo data loaded" in log.read_text()
        postmaster = int((data / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        kept = [home / "dagster.yaml", home / "stack.pids", data / "postgres" / "port"]
        before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in kept}
        console = f"http://127.0.0.1:{port}"
        # The same console port, as two plain `make dev` have: before the fix each got as
        # far as the port (exit 1), having done all of the above on the way.
        seconds = [
            (["dev"], own_env(data), f"in {data} (", "another data folder (MM_DATA_DIR)"),
            (
                ["prod-local", "--grpc-port", str(free_port())],
                own_env(data),
                f"in {data} (",
                "another data folder (MM_DATA_DIR)",
            ),
            (
                ["dev"],
                own_env(tmp_path / "elsewhere", DAGSTER_HOME=str(home)),
                f"on the Dagster instance in {home} (",
                "another Dagster instance (DAGSTER_HOME)",
            ),
        ]
        for args, env, where, advice in seconds:
            second = mm_jobs(env, *args, "--port", str(port), "--no-demo")
            said = f"{args}: exit {second.returncode}\n{second.stdout}\n{second.stderr}"
            assert second.returncode == 2, said
            (refusal,) = json_lines(second.stderr, "mm-jobs")
            event = refusal["event"]
            assert f"mm-jobs dev is already running {where}pid {proc.pid}" in event, said
            assert f"job console on {console}" in event and advice in event, said
            assert f"kill -TERM {proc.pid}" in event, said
            assert (refusal["exitCode"], refusal["pid"], refusal["console"]) == (
                2,
                proc.pid,
                console,
            )
            assert "PostgreSQL" not in second.stdout, said  # nothing started
        assert not (tmp_path / "elsewhere" / "postgres").exists()

        assert int((data / "postgres" / "data" / "postmaster.pid").read_text().split()[0]) == (
            postmaster
        )
        assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in kept} == before
        assert "left running" not in log.read_text()
        wait_until_serving(port, proc, log, seconds=10)
        holders: dict[str, set[int]] = {}
        stack = psutil.Process(proc.pid)
        for process in [stack, *stack.children(recursive=True), psutil.Process(postmaster)]:
            with contextlib.suppress(psutil.Error):
                for opened in process.open_files():
                    if opened.path.endswith(".lock"):
                        holders.setdefault(opened.path, set()).add(process.pid)
        claims = [data / "stack.lock", home / "stack.lock", data / "postgres" / "owner.lock"]
        assert holders == {str(path): {proc.pid} for path in claims}
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    finally:
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)
    _assert_all_stopped([*family, postmaster], log)
    for path in claims:  # free again for the next start
        Claim(path).take().release()


def _assert_all_stopped(pids: list[int], log: Path) -> None:
    time.sleep(1)
    alive = [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], f"left running: {alive}"
    assert "embedded PostgreSQL stopped" in log.read_text()


LOCATIONS_QUERY = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus displayMetadata { key value }
  locationOrLoadError { __typename } } } } }
"""


def _processes(pid: int, roles: dict[str, str]) -> dict[str, int]:
    """A stack's live processes by role (`roles`: a command-line marker to its role); a
    run worker and a zombie are no role's."""
    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        for marker, role in roles.items():
            if marker in line and "execute_run" not in line:
                found.setdefault(role, child.pid)
    return found


def _family(pid: int) -> dict[str, int]:
    """prod-local's supervised processes by role, from their command lines."""
    return _processes(
        pid, {"api grpc": "code-server", "dagster-daemon": "daemon", "mm-jobs console": "webserver"}
    )


def test_prod_local_runs_three_processes_and_restarts_a_crashed_one(tmp_path):
    port, grpc_port = free_port(), free_port()
    data = tmp_path / "mm"
    log_path = tmp_path / "prod-local.log"
    proc = start(
        ["prod-local", "--port", str(port), "--grpc-port", str(grpc_port),
         "--reports-port", str(free_port())],
        own_env(data), log_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        family = _family(proc.pid)
        assert set(family) == {"code-server", "daemon", "webserver"}, family
        entries = graphql(port, LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
        (entry,) = entries
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        metadata = {m["key"]: m["value"] for m in entry["displayMetadata"]}
        assert metadata.get("port") == str(grpc_port), metadata  # loaded over gRPC
        nodes = graphql(port, SCHEDULES_QUERY)["repositoriesOrError"]["nodes"]
        schedules = {s["name"]: s for node in nodes for s in node["schedules"]}
        expiry = schedules["share_link_expiry_schedule"]
        assert expiry["cronSchedule"] == "*/5 * * * *"  # MM_ENV=staging
        assert expiry["scheduleState"]["status"] == "RUNNING"

        # The supervisor brings a crashed code server back, as systemd would.
        os.killpg(family["code-server"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _family(proc.pid).get("code-server") in (None, family["code-server"]):
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert "code-server was killed by SIGKILL; restarting" in log_path.read_text()
        everything = [proc.pid, *_family(proc.pid).values()]
        postgres_pid = int((data / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=90)
    _assert_all_stopped([*everything, postgres_pid], log_path)


LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
# What a recovery may take on this 2-core machine under the suite (measured 2026-12-07 on a
# quiet one: the code location back 20 s after its gRPC child was killed and a launched run
# done at 25 s; the others back within 15 s): the probe's 10 s, the 5 s restart delay, the
# code server's start, the run's own seconds, with room for a loaded machine.
RECOVERY_SECONDS = 90


def _dev_processes(pid: int) -> dict[str, int]:
    """`mm-jobs dev`'s processes by role: the code server (`dagster code-server start`), the
    `dagster api grpc` child it serves through, the daemon and the console."""
    return _processes(
        pid,
        {
            "code-server start": "code-server",
            "api grpc": "grpc-child",
            "dagster-daemon": "daemon",
            "mm-jobs console": "webserver",
        },
    )


def _a_run_succeeds(port: int, deadline: float) -> float:
    """Launch invite-cleanup from the console until a launch is taken (a code server that
    is still starting refuses one), wait for the run to succeed; the seconds left."""
    params = {
        "selector": {
            "repositoryLocationName": "mm_orchestration",
            "repositoryName": "__repository__",
            "jobName": "invite_cleanup",
        }
    }
    run_id = None
    while run_id is None:
        assert time.monotonic() < deadline, "no launch was taken"
        with contextlib.suppress(OSError):  # a 500 while the code server is away
            launched = graphql(port, LAUNCH, {"p": params})["launchRun"]
            if launched["__typename"] == "LaunchRunSuccess":
                run_id = launched["run"]["runId"]
                break
        time.sleep(1)
    while (status := graphql(port, RUN_STATUS, {"id": run_id})["runOrError"]["status"]) in (
        "QUEUED", "NOT_STARTED", "STARTING", "STARTED",
    ):  # fmt: skip
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(0.5)
    assert status == "SUCCESS", (run_id, status)
    return deadline - time.monotonic()


def test_dev_recovers_from_any_of_its_processes_being_killed(tmp_path):
    """kill -9 of the `dagster api grpc` child of `dagster code-server start` (which never
    starts another, and answers every call with an error while it lives on): the supervisor
    finds the code server no longer answers and restarts it; the console loads the code
    location again and a launched run succeeds. Then kill -9 of the code server itself,
    the daemon and the console together: each is restarted, and a run succeeds again."""
    port = free_port()
    log = tmp_path / "dev.log"
    proc = start(["dev", "--port", str(port), "--no-demo"], own_env(tmp_path / "mm"), log)
    try:
        wait_until_serving(port, proc, log)
        before = _dev_processes(proc.pid)
        assert set(before) == {"code-server", "grpc-child", "daemon", "webserver"}, before

        os.kill(before["grpc-child"], signal.SIGKILL)
        killed = time.monotonic()
        left = _a_run_succeeds(port, killed + RECOVERY_SECONDS)
        print(f"grpc child killed: a run succeeded {RECOVERY_SECONDS - left:.1f} s later")
        text = log.read_text()
        assert "code-server (pid" in text and "has not answered for" in text, text[-3000:]
        after = _dev_processes(proc.pid)
        assert after["code-server"] != before["code-server"], after

        for role in ("code-server", "daemon", "webserver"):
            os.kill(after[role], signal.SIGKILL)  # the process alone, not its group
        killed = time.monotonic()
        deadline = killed + RECOVERY_SECONDS
        while True:
            now = _dev_processes(proc.pid)
            if all(now.get(r) not in (None, after[r]) for r in ("code-server", "daemon")):
                if now.get("webserver") not in (None, after["webserver"]):
                    break
            assert time.monotonic() < deadline, (after, now, log.read_text()[-3000:])
            time.sleep(0.5)
        wait_until_serving(port, proc, log, seconds=deadline - time.monotonic())
        left = _a_run_succeeds(port, deadline)
        took = RECOVERY_SECONDS - left
        print(f"code server, daemon, console killed: a run succeeded {took:.1f} s later")
        for role in ("code-server", "daemon", "webserver"):
            assert f"{role} was killed by SIGKILL; restarting" in log.read_text()
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)


def test_an_embedded_server_that_cannot_start_is_refused_with_the_servers_own_reason(tmp_path):
    """A bad line in the embedded server's postgresql.conf: `mm-jobs dev` exited 1 with an
    `mm.uncaught` critical line holding pg_ctl's "Examine the log output" and the last 15
    lines of the server's log, every earlier start's and stop's among them. Now a refusal:
    one JSON line (exit 2) with what the server said when this start failed, the data
    folder and what to do, and nothing left running or claimed."""
    from mm_orchestration.local.embedded_pg import EmbeddedPostgres

    data = tmp_path / "mm"
    server = EmbeddedPostgres(data / "postgres")
    server.start()
    server.stop()  # the log now holds a whole start and stop, none of it the reason
    conf = server.data_dir / "postgresql.conf"
    lines = conf.read_text().count("\n")
    conf.write_text(conf.read_text() + "shared_buffers = = 128MB\n")
    proc = mm_jobs(
        own_env(data),
        "dev",
        "--port",
        str(free_port()),
        "--grpc-port",
        str(free_port()),
        "--no-demo",
    )
    said = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 2, said
    (refusal,) = json_lines(proc.stderr, "mm-jobs dev")
    event = refusal["event"]
    assert (refusal["level"], refusal["logger"], refusal["exitCode"]) == ("error", "mm-jobs", 2)
    assert event.startswith(
        f"the embedded PostgreSQL (data folder {server.data_dir}) did not start: LOG: syntax "
        f'error in file "{conf}" line {lines + 1}, near token "="; FATAL: configuration file '
        f'"{conf}" contains errors. Fix what the server names'
    ), said
    assert f"or move {server.root} aside" in event and str(server.log_file) in event, said
    # This start's words only: not the earlier start's, nor pg_ctl's "read the log".
    for old in ("ready to accept connections", "shutting down", "Examine the log"):
        assert old not in event, said
    assert refusal["dataDir"] == str(data)
    assert "Traceback" not in proc.stderr and "PostgreSQL on" not in proc.stdout, said
    assert not server.is_running()
