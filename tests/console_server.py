"""One real `mm-jobs console` (Dagster's webserver behind our front) on a module's own
databases, for the console's tests: the test is the identity proxy (it sets
X-Auth-Request-Email and the proxy's secret from 127.0.0.1, the trusted address) or a
stranger (127.0.0.2, which the console does not trust), and talks plain HTTP with curl, as
a script would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mm_orchestration.local.embedded_pg import free_port
from mm_orchestration.platform.instance import write_home
from tests.conftest import create_database, drop_database
from tests.local_stack import MM_JOBS

HEADER = "X-Auth-Request-Email"
OPERATOR, ADMIN, VIEWER = "olivia@mm.example", "adam@mm.example", "vera@mm.example"
COMPLIANCE = "carla@mm.example"
ROLES = f"{OPERATOR}=operator; {ADMIN}=admin; {VIEWER}=viewer; {COMPLIANCE}=compliance"
# The proxy proves itself with this secret; people open the console at PUBLIC (the test
# talks to its port directly, as the proxy would, whatever Host that carries).
SECRET = "test-proxy-secret-0123456789abcdef0123456789"
PUBLIC = "https://jobs.mm.example"

LAUNCH = """
mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId tags { key value } } }
  ... on PythonError { message } ... on UnauthorizedError { message } } }
"""


@dataclass
class Console:
    port: int
    database_url: str
    env: dict[str, str]
    data_dir: Path

    def audit(self, where: str = "TRUE", params: Any = ()) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(
                f"SELECT * FROM ops.audit_log WHERE {where} ORDER BY id",  # noqa: S608 (tests' own)
                params,
            ).fetchall()


@pytest.fixture(scope="module", name="console")
def console_fixture(pg_server, tmp_path_factory) -> Iterator[Console]:
    """The module's console (import this, the fixture is `console`)."""
    tmp = tmp_path_factory.mktemp("console")
    portal, storage = create_database(pg_server), create_database(pg_server, template=None)
    database_url = pg_server.url(portal)
    home = write_home(tmp / "dagster_home")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MM_", "DAGSTER_"))
    }
    env.update(
        DATABASE_URL=database_url,
        DAGSTER_HOME=str(home),
        DAGSTER_DATABASE_URL=pg_server.url(storage),
        MM_DATA_DIR=str(tmp / "mm"),
        MM_CONSOLE_AUTH="proxy",
        MM_CONSOLE_TRUSTED_PROXIES="127.0.0.1",
        MM_CONSOLE_ROLES=ROLES,
        MM_CONSOLE_PUBLIC_URL=PUBLIC,
        MM_CONSOLE_PROXY_SECRET=SECRET,
        # Many tests share this console: none should spend another's refusal budget.
        MM_CONSOLE_REFUSALS_PER_MINUTE="100000",
    )
    try:
        with serving_console(env, tmp / "console.log") as port:
            yield Console(port, database_url, env, tmp / "mm")
    finally:
        drop_database(pg_server, portal)
        drop_database(pg_server, storage)


@contextlib.contextmanager
def serving_console(env: dict[str, str], log: Path) -> Iterator[int]:
    """`mm-jobs console` with `env` on a free port, until it serves; its port. Stopped
    (SIGTERM, as a process manager stops it) on the way out."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [MM_JOBS, "console", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while curl(port, "/server_info")[0] != 200:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """(status, body) of one request written byte for byte (no client normalises its
    path or headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def curl(
    port: int,
    path: str,
    person: str | None = None,
    body: Any = None,
    source: str = "127.0.0.1",
    method: str | None = None,
    content_type: str = "application/json",
    forwarded: str | None = None,
    origin: str | None = None,
    secret: str | None = SECRET,
) -> tuple[int, bytes, str]:
    """(status, body, response headers) of one request with curl from `source`, as the
    proxy (with `person`, and the proxy's secret unless `secret` says otherwise) or as a
    stranger."""
    args = ["curl", "-g", "-s", "-S", "--interface", source, "-D", "-", "-o", "-"]
    if secret is not None:
        args += ["-H", f"X-MM-Proxy-Secret: {secret}"]
    if person is not None:
        args += ["-H", f"{HEADER}: {person}"]
    if forwarded is not None:
        args += ["-H", f"X-Forwarded-For: {forwarded}"]
    if origin is not None:
        args += ["-H", f"Origin: {origin}"]
    if body is not None:
        data = body if isinstance(body, str) else json.dumps(body)
        args += ["-H", f"Content-Type: {content_type}", "--data-binary", data]
    if method:
        args += ["-X", method]
    done = subprocess.run(
        [*args, f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=60
    )
    if done.returncode != 0:
        return 0, done.stderr, ""
    head, _, payload = done.stdout.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, payload, head.decode("latin-1").lower()


def gql(console: Console, person: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    status, body, _ = curl(
        console.port, "/graphql", person, {"query": query, "variables": variables or {}}
    )
    assert status in (200, 400, 500), (status, body[:500])
    return json.loads(body)


def launch_params(job: str, tags: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "selector": {
            "repositoryLocationName": "mm_orchestration",
            "repositoryName": "__repository__",
            "jobName": job,
        },
        "executionMetadata": {"tags": tags or []},
    }
