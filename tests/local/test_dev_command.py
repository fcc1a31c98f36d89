"""`mm-jobs dev` (what `make dev` runs) and `mm-jobs prod-local` (`make prod-local`):
embedded PostgreSQL, demo data, the console with its schedules running, and Ctrl-C leaving
nothing behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from mm_orchestration.local.embedded_pg import free_port
from tests.local_stack import graphql, own_env, start, wait_until_serving

SCHEDULES_QUERY = """
query { repositoriesOrError { ... on RepositoryConnection { nodes {
  name schedules { name cronSchedule executionTimezone scheduleState { status } } } } } }
"""


def test_dev_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    data = tmp_path / "mm"
    log = tmp_path / "dev.log"
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
        assert "demo data loaded" in (tmp_path / "dev.log").read_text()
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        postgres_pid = int((data / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)
    _assert_all_stopped([*family, postgres_pid], log)


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
        "mm-jobs console": "webserver",
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
