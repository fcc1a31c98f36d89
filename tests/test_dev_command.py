"""`mm-jobs dev` (what `make dev` runs) and `mm-jobs prod-local` (`make prod-local`):
embedded PostgreSQL, demo data, the console with its schedules running, and Ctrl-C leaving
nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from mm_orchestration.embedded_pg import free_port

MM_JOBS = str(Path(sys.executable).with_name("mm-jobs"))

SCHEDULES_QUERY = """
query { repositoriesOrError { ... on RepositoryConnection { nodes {
  name schedules { name cronSchedule executionTimezone scheduleState { status } } } } } }
"""


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_dev_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    data = tmp_path / "mm"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "DAGSTER_", "SENDGRID_"))
    }
    env["MM_DATA_DIR"] = str(data)
    log = open(tmp_path / "dev.log", "w")
    proc = subprocess.Popen(
        [MM_JOBS, "dev", "--port", str(port), "--reports-port", str(free_port())],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the console did not come up in 90 s"
                time.sleep(0.5)
        nodes = _graphql(port, SCHEDULES_QUERY)["data"]["repositoriesOrError"]["nodes"]
        schedules = {s["name"]: s for node in nodes for s in node["schedules"]}
        expiry = schedules["share_link_expiry_schedule"]
        assert expiry["scheduleState"]["status"] == "RUNNING"
        assert expiry["executionTimezone"] == "Australia/Sydney"
        assert (data / "postgres" / "data" / "PG_VERSION").exists()
        assert "demo data loaded" in (tmp_path / "dev.log").read_text()
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        postgres_pid = int((data / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)
    log.close()
    _assert_all_stopped([*family, postgres_pid], tmp_path / "dev.log")


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


def _family(pid: int) -> dict[str, int]:
    """The supervised processes by role, from their command lines."""
    roles = {
        "api grpc": "code-server",
        "dagster-daemon": "daemon",
        "dagster-webserver": "webserver",
    }
    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        for marker, role in roles.items():
            if marker in line and "execute_run" not in line:
                found.setdefault(role, child.pid)
    return found


def test_prod_local_runs_three_processes_and_restarts_a_crashed_one(tmp_path):
    port, grpc_port = free_port(), free_port()
    data = tmp_path / "mm"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "DAGSTER_", "SENDGRID_", "MM_"))
    }
    env["MM_DATA_DIR"] = str(data)
    log_path = tmp_path / "prod-local.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [MM_JOBS, "prod-local", "--port", str(port), "--grpc-port", str(grpc_port),
         "--reports-port", str(free_port())],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "job console on" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        family = _family(proc.pid)
        assert set(family) == {"code-server", "daemon", "webserver"}, family
        entries = _graphql(port, LOCATIONS_QUERY)["data"]["workspaceOrError"]["locationEntries"]
        (entry,) = entries
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        metadata = {m["key"]: m["value"] for m in entry["displayMetadata"]}
        assert metadata.get("port") == str(grpc_port), metadata  # loaded over gRPC
        nodes = _graphql(port, SCHEDULES_QUERY)["data"]["repositoriesOrError"]["nodes"]
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
        assert "code-server exited" in log_path.read_text()
        everything = [proc.pid, *_family(proc.pid).values()]
        postgres_pid = int((data / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=90)
    log.close()
    _assert_all_stopped([*everything, postgres_pid], log_path)
