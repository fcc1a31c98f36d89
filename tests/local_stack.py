"""Starting `mm-jobs dev` or `mm-jobs prod-local` from a test, and asking its console."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MM_JOBS = str(Path(sys.executable).with_name("mm-jobs"))
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def mm_jobs(
    env: Mapping[str, str] | None, *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`mm-jobs *args` run to its end in its own process (this environment when `env` is
    None), its output captured as text."""
    return subprocess.run(
        [MM_JOBS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def own_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment minus every database, Dagster, SendGrid and MM_ setting, so the
    started stack runs its own embedded PostgreSQL in `data_dir`; then `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "DAGSTER_", "SENDGRID_", "MM_"))
    }
    return {**env, "MM_DATA_DIR": str(data_dir), **settings}


def start(
    args: list[str], env: dict[str, str], log: Path, ignore_sigint: bool = False, make: bool = False
) -> subprocess.Popen[bytes]:
    """`mm-jobs ARGS` (or `make ARGS`) in a session of its own, as a terminal's foreground
    job is in its process group, its output in `log`. `ignore_sigint`: as a background job
    of a non-interactive shell starts (`make dev &` in a script)."""

    def dispositions() -> None:
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    command = ["make", "-s", "-C", str(PROJECT_ROOT), *args] if make else [MM_JOBS, *args]
    with open(log, "w") as out:
        return subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dispositions,
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


def graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `data` of a GraphQL query to the console on `port`."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def wait_for(what: str, check: Any, timeout: float, logs: Path | None = None) -> Any:
    """Poll `check()` once a second until it returns something true, and return that. The
    deadline is generous on purpose (a loaded 2-core CI machine is slow, not broken); when it
    passes, fail with the tail of every log in `logs`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = (
                ""
                if logs is None
                else "\n".join(
                    f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.iterdir())
                )
            )
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")
        time.sleep(1)


def sensor_started(instance: Any, name: str) -> bool:
    """Whether the daemon has evaluated sensor `name` at least once (its state holds a cursor).
    A run-status sensor starts from the events of its first evaluation: runs that end before
    it are not its business, so a test waits for this before it makes the runs it watches."""
    return any(
        s.instigator_type.value == "SENSOR"
        and s.instigator_name == name
        and getattr(s.instigator_data, "cursor", None)
        for s in instance.all_instigator_state()
    )
