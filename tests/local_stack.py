"""Starting `mm-jobs dev` or `mm-jobs prod-local` from a test, and asking its console."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

MM_JOBS = str(Path(sys.executable).with_name("mm-jobs"))


def own_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment minus every database, Dagster, SendGrid and MM_ setting, so the
    started stack runs its own embedded PostgreSQL in `data_dir`; then `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "DAGSTER_", "SENDGRID_", "MM_"))
    }
    return {**env, "MM_DATA_DIR": str(data_dir), **settings}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`mm-jobs ARGS` in a session of its own, its output in `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [MM_JOBS, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_serving(
    port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 120
) -> None:
    """Until the console answers; fails with the log's end if the process dies first."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"the console did not come up in {seconds} s"
            time.sleep(0.5)


def graphql(port: int, query: str) -> dict[str, Any]:
    """The `data` of a GraphQL query to the console on `port`."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]
