"""Logs a collector can read: every line `mm-jobs run` writes on stderr is one JSON object,
Dagster's lines and ours alike, with the seed's fields where they apply (issue 26).

The console's lines are read here too; the daemon's, the code server's and the run pods'
lines are read the same way in
tests/platform/test_kubernetes_run.py, which starts those processes anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import factories as f
from tests.conftest import create_database, drop_database
from tests.console_server import (  # noqa: F401 - the module's console (fixture `console`)
    OPERATOR,
    console_fixture,
    curl,
)

MM_JOBS = str(Path(sys.executable).with_name("mm-jobs"))
KEYS = {"timestamp", "level", "logger", "event"}


def json_lines(text: str, where: str) -> list[dict[str, Any]]:
    """Every non-empty line of `text` as a JSON object with the common keys, else the
    assertion names the first line that is not."""
    parsed = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where}: not a JSON line: {line[:300]}") from None
        assert isinstance(document, dict), line
        assert KEYS <= set(document), f"{where}: {sorted(KEYS - set(document))} missing: {line}"
        parsed.append(document)
    return parsed


@pytest.fixture
def dagster_env(pg_server, database_url, tmp_path, project_root, monkeypatch):
    storage = create_database(pg_server, template=None)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(project_root / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DATABASE_URL": pg_server.url(storage),
        "MM_DATA_DIR": str(tmp_path / "data"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {**os.environ, **env}
    drop_database(pg_server, storage)


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MM_JOBS, "run", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_run_from_the_shell_writes_only_json_lines(dagster_env, conn):
    tenant = f.tenant(conn)
    conn.execute(
        "INSERT INTO portal.invitations (tenant_id, email, role, status, created_at)"
        " VALUES (%s, 'guest@client.example', 'viewer', 'pending', now() - interval '4 days')",
        [tenant],
    )
    proc = _run(dagster_env, "invite-cleanup")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = next(x.split(": ")[1] for x in proc.stdout.splitlines() if x.startswith("run id: "))
    lines = json_lines(proc.stderr, "mm-jobs run stderr")
    ours = [line for line in lines if line.get("event") == "job.succeeded"]
    assert len(ours) == 1, lines
    (done,) = ours
    assert done["jobName"] == "invite-cleanup" and done["runId"] == run_id
    assert done["status"] == "succeeded" and isinstance(done["durationMs"], int)
    assert done["level"] == "info" and done["timestamp"].endswith("+00:00")
    # Dagster's own run events are lines too, with the run's job (the inventory's name).
    assert all(line.get("runId") == run_id for line in lines if "dagsterEvent" in line)
    assert all(line["jobName"] == "invite-cleanup" for line in lines if "dagsterEvent" in line)


def test_a_failed_run_says_so_in_json_lines(dagster_env, pg_server):
    """Its error (which table is missing) and the command's own last word, both JSON."""
    bare = create_database(pg_server, template=None)
    env = {**dagster_env, "DATABASE_URL": pg_server.url(bare)}
    try:
        assert subprocess.run([MM_JOBS, "migrate"], env=env, timeout=120).returncode == 0
        proc = _run(env, "share-link-expiry")
    finally:
        drop_database(pg_server, bare)
    assert proc.returncode == 1
    lines = json_lines(proc.stderr, "mm-jobs run stderr")
    failures = [line for line in lines if line.get("status") == "failed"]
    assert failures and all(line["jobName"] == "share-link-expiry" for line in failures)
    assert any(line.get("dagsterEvent") == "STEP_FAILURE" for line in lines), lines
    last = lines[-1]
    assert last["level"] == "error" and "FAILED" in last["event"]
    assert "portal.share_links" in proc.stderr


def test_the_console_writes_only_json_lines(console):
    """`mm-jobs console`: its announcement, uvicorn's and Dagster's lines, and a refusal's
    warning, each one JSON object (the console's log is its stdout and stderr)."""
    assert curl(console.port, "/server_info")[0] == 200
    assert curl(console.port, "/graphql", OPERATOR, {"query": "{ version }"})[0] == 200
    assert curl(console.port, "/graphql", None, {"query": "{ version }"})[0] == 401
    log = console.data_dir.parent / "console.log"
    lines = json_lines(log.read_text(), "mm-jobs console")
    assert any("job console on" in line["event"] for line in lines), lines
