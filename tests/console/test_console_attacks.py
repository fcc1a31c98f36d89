"""The console tried as an attacker with a role, or a process on the proxy's machine, would
try it (issue 22's cases, each a kind): against one real console behind no proxy, the test
being the proxy (tests/console_server.py). The browser's part (framing, the websocket
through nginx) is tests/console/test_console_proxy.py.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import psycopg
import pytest

from mm_orchestration.console.access import ConsoleAccess
from mm_orchestration.console.audit_log import ConsoleAudit, RateLimited
from mm_orchestration.console.refusals import RefusalLimiter
from mm_orchestration.platform.settings import SettingsError
from tests.conftest import create_database, drop_database
from tests.console_server import (
    ADMIN,
    HEADER,
    LAUNCH,
    OPERATOR,
    PUBLIC,
    SECRET,
    VIEWER,
    console_fixture,  # noqa: F401 - the module's console (fixture `console`)
    curl,
    gql,
    launch_params,
    raw_request,
)

CANARY = "canary-secret-value-771"
SELECTOR = '{repositoryLocationName: "mm_orchestration", repositoryName: "__repository__"'


# -- 1 and 3: one public address; the proxy proves itself ---------------------------------


def test_proxy_mode_needs_its_public_address_and_a_secret_never_shown():
    base = {"MM_CONSOLE_TRUSTED_PROXIES": "127.0.0.1"}
    with pytest.raises(SettingsError, match="MM_CONSOLE_PUBLIC_URL is not set"):
        ConsoleAccess.from_env({**base, "MM_CONSOLE_PROXY_SECRET": SECRET})
    with pytest.raises(SettingsError, match="MM_CONSOLE_PROXY_SECRET is not set"):
        ConsoleAccess.from_env({**base, "MM_CONSOLE_PUBLIC_URL": PUBLIC})
    for bad in (CANARY[:20], CANARY + " with spaces " + CANARY):
        with pytest.raises(SettingsError, match="MM_CONSOLE_PROXY_SECRET must be") as raised:
            ConsoleAccess.from_env(
                {**base, "MM_CONSOLE_PUBLIC_URL": PUBLIC, "MM_CONSOLE_PROXY_SECRET": bad}
            )
        assert CANARY[:10] not in str(raised.value)
    for url in ("jobs.example.com", "ftp://jobs.example.com", "https://u:p@jobs.example.com",
                "https://jobs.example.com/?x=1", "https://jobs.example.com:99999"):  # fmt: skip
        with pytest.raises(SettingsError, match="MM_CONSOLE_PUBLIC_URL is not"):
            ConsoleAccess.from_env(
                {**base, "MM_CONSOLE_PUBLIC_URL": url, "MM_CONSOLE_PROXY_SECRET": SECRET}
            )
    access = ConsoleAccess.from_env(
        {
            **base,
            "MM_CONSOLE_PUBLIC_URL": "HTTPS://Jobs.Example.com:443/console/",
            "MM_CONSOLE_PROXY_SECRET": SECRET,
        }
    )
    assert (access.public_origin, access.path_prefix) == ("https://jobs.example.com", "/console")
    assert SECRET not in repr(access)


def test_a_local_process_or_a_rebinding_page_is_not_the_proxy(console):
    """From the proxy's own address, a request naming an admin is nobody without the
    proxy's secret: any Host, a wrong secret, or the secret twice."""
    for headers in (
        [f"{HEADER}: {ADMIN}", "Host: rebind.attacker.example"],
        [f"{HEADER}: {ADMIN}", "X-MM-Proxy-Secret: " + SECRET[:-1] + "x"],
        [f"{HEADER}: {ADMIN}", f"X-MM-Proxy-Secret: {SECRET}", f"X-MM-Proxy-Secret: {SECRET}"],
    ):
        args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
        for h in headers:
            args += ["-H", h]
        done = subprocess.run(
            [*args, "-X", "POST", "-H", "Content-Type: application/json",
             "--data", '{"query": "mutation { reloadWorkspace { __typename } }"}',
             f"http://127.0.0.1:{console.port}/graphql"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.stdout == "401", headers
    # The proxy with its secret: whatever Host it forwards (its upstream's, the browser's
    # host without the port, a rewritten one), the answer is the same.
    for host in (f"127.0.0.1:{console.port}", "jobs.mm.example", "internal-name:8080"):
        done = subprocess.run(
            ["curl", "-s", "-H", f"{HEADER}: {OPERATOR}", "-H", f"X-MM-Proxy-Secret: {SECRET}",
             "-H", f"Host: {host}", "-H", f"Origin: {PUBLIC}", "-H",
             "Content-Type: application/json", "--data",
             '{"query": "mutation { setNuxSeen }"}',
             f"http://127.0.0.1:{console.port}/graphql"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert json.loads(done.stdout)["data"]["setNuxSeen"] is True
    refused = console.audit("action = 'console_request' AND details->>'status' = '401'")
    assert len(refused) >= 3 and all(e["outcome"] == "refused" for e in refused)


def test_origins_are_judged_against_the_public_address_as_full_origins(console):
    mutation = {"query": "mutation { setNuxSeen }"}
    for origin in (
        f"http://127.0.0.1:{console.port}",  # the console's own socket: not where people are
        "http://jobs.mm.example",  # another scheme
        "https://jobs.mm.example:8443",  # another port
        "https://jobs.mm.example.evil.example",
        "null",
    ):
        status, body, _ = curl(console.port, "/graphql", OPERATOR, mutation, origin=origin)
        assert status == 403 and b"another site" in body, origin
    for origin in (PUBLIC, "https://JOBS.mm.example", "https://jobs.mm.example:443"):
        status, body, _ = curl(console.port, "/graphql", OPERATOR, mutation, origin=origin)
        assert status == 200, (origin, body[:300])


def test_the_live_updates_websocket_opens_from_the_public_origin_only(console):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{console.port}/graphql"
    headers = {HEADER: VIEWER, "X-MM-Proxy-Secret": SECRET}
    with connect(url, subprotocols=["graphql-ws"], origin=PUBLIC, additional_headers=headers) as ws:  # type: ignore[arg-type,list-item]
        ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
    with pytest.raises(InvalidStatus):
        connect(url, subprotocols=["graphql-ws"], origin="https://evil.example",  # type: ignore[arg-type,list-item]
                additional_headers=headers)  # fmt: skip


# -- 2: run config from people resolves nothing -------------------------------------------


def _launch(console: Any, person: str, job: str, config: Any) -> dict[str, Any]:
    params = {**launch_params(job), "runConfigData": config}
    return gql(console, person, LAUNCH, {"p": params})["data"]["launchPipelineExecution"]


@pytest.mark.parametrize("person", [OPERATOR, ADMIN])
@pytest.mark.parametrize(
    "job, config",
    [
        ("notification_digest",
         {"ops": {"queue_due_digests": {"config": {"tenant_id": {"env": "DATABASE_URL"}}}}}),
        ("notification_digest",
         "ops:\n  queue_due_digests:\n    config:\n      now: {env: MM_CANARY}\n"),
        ("dlq_discard", {"ops": {"discard_dead_letter": {"config": {
            "dlq_id": 1, "reason": {"env": "MM_CANARY"}}}}}),
    ],
)  # fmt: skip
def test_a_run_config_that_reads_the_environment_is_refused_whoever_sends_it(
    console, person, job, config
):
    before = len(console.audit())
    answer = _launch(console, person, job, config)
    assert answer["__typename"] == "PythonError", answer
    assert "read an environment variable" in answer["message"]
    assert CANARY not in json.dumps(answer) and "postgresql://" not in json.dumps(answer)
    (entry,) = console.audit()[before:]
    assert (entry["actor"], entry["outcome"]) == (person, "refused")
    assert "read an environment variable" in entry["details"]["refusal"]
    assert CANARY not in json.dumps(entry["details"])


def test_the_launchpads_resources_are_dropped_and_other_blocks_are_admins(console):
    """The Launchpad sends each resource's configured values back, `{env: DATABASE_URL}`
    included: dropped (the run gets the resources as deployed), so the launch goes on.
    The executor's and loggers' blocks are an admin's to set, never the environment."""
    echo = {"resources": {"portal_db": {"config": {"url": {"env": "DATABASE_URL"}}}}}
    answer = _launch(console, OPERATOR, "share_link_expiry", echo)
    assert answer["__typename"] == "LaunchRunSuccess", answer
    execution = {"execution": {"config": {"in_process": {}}}}
    answer = _launch(console, OPERATOR, "share_link_expiry", execution)
    assert answer["__typename"] == "PythonError" and "only an admin may set" in answer["message"]
    sneaky = {"execution": {"config": {"in_process": {"marker_to_close": {"env": "X"}}}}}
    answer = _launch(console, ADMIN, "share_link_expiry", sneaky)
    assert "read an environment variable" in answer["message"]


def test_the_execution_plan_query_runs_code_so_it_is_judged_and_audited(console):
    query = """query($c: RunConfigData) { executionPlanOrError(
      pipeline: {repositoryLocationName: "mm_orchestration", repositoryName: "__repository__",
                 pipelineName: "notification_digest"}, runConfigData: $c, mode: "default") {
      __typename ... on PythonError { message } } }"""
    env = {"ops": {"queue_due_digests": {"config": {"tenant_id": {"env": "DATABASE_URL"}}}}}
    answer = gql(console, VIEWER, query, {"c": {}})["data"]["executionPlanOrError"]
    assert "viewer may not plan execution" in answer["message"]
    answer = gql(console, OPERATOR, query, {"c": env})["data"]["executionPlanOrError"]
    assert "read an environment variable" in answer["message"]
    assert "postgresql" not in json.dumps(answer)
    answer = gql(console, OPERATOR, query, {"c": {}})["data"]["executionPlanOrError"]
    assert answer["__typename"] == "ExecutionPlan"
    entries = console.audit("action = 'plan_execution'")
    assert [(e["actor"], e["outcome"]) for e in entries] == [
        (VIEWER, "refused"),
        (OPERATOR, "refused"),
        (OPERATOR, "succeeded"),
    ]


# -- 4: reads that run code are actions -----------------------------------------------


def test_evaluating_a_schedule_through_a_query_is_admins_and_audited_once(console):
    """`futureTicks { evaluationResult }` runs the schedule's function on the code server, as
    the admin-only `scheduleDryRun` does (a sensor's `nextTick` is the same field)."""
    ticks = f"""query {{ scheduleOrError(scheduleSelector: {SELECTOR},
      scheduleName: "invite_cleanup_schedule"}}) {{ ... on Schedule {{ futureTicks(limit: 5) {{
      results {{ timestamp evaluationResult {{ skipReason runRequests {{ runKey }} }} }} }}
      }} }} }}"""
    before = len(console.audit())
    answer = gql(console, VIEWER, ticks)
    assert "viewer may not evaluate tick" in json.dumps(answer["errors"])
    assert all(
        r["evaluationResult"] is None
        for r in answer["data"]["scheduleOrError"]["futureTicks"]["results"]
    )
    answer = gql(console, OPERATOR, ticks)
    assert "operator may not evaluate tick" in json.dumps(answer["errors"])
    answer = gql(console, ADMIN, ticks)
    results = answer["data"]["scheduleOrError"]["futureTicks"]["results"]
    assert len(results) == 5 and all(r["evaluationResult"] is not None for r in results)
    entries = console.audit()[before:]
    assert [(e["action"], e["actor"], e["outcome"]) for e in entries] == [
        ("evaluate_tick", VIEWER, "refused"),
        ("evaluate_tick", OPERATOR, "refused"),
        ("evaluate_tick", ADMIN, "succeeded"),
    ]  # five ticks, one entry


# -- 5: an audit that cannot be flooded or dodged ---------------------------------------


def test_a_request_of_many_aliased_mutations_is_one_refused_entry(console):
    fields = " ".join(f'a{i}: terminateRun(runId: "r{i}") {{ ...E }}' for i in range(300))
    fields += " } fragment E on TerminateRunResult { ... on UnauthorizedError { message }"
    before = len(console.audit())
    status, body, _ = curl(console.port, "/graphql", VIEWER, {"query": f"mutation {{ {fields} }}"})
    assert status in (200, 400)
    assert "one mutation per request" in body.decode()
    (entry,) = console.audit()[before:]
    assert (entry["action"], entry["outcome"], entry["actor"]) == (
        "graphql_request",
        "refused",
        VIEWER,
    )
    assert entry["details"]["mutations"] == {"terminateRun": 300}
    # Through a fragment on Mutation, and even for an admin: one request, one action.
    fragment = (
        "mutation { ...F } fragment F on Mutation { a: reloadWorkspace { ...W } "
        "b: reloadWorkspace { ...W } } fragment W on ReloadWorkspaceMutationResult "
        "{ ... on UnauthorizedError { message } }"
    )
    status, body, _ = curl(console.port, "/graphql", ADMIN, {"query": fragment})
    assert "one mutation per request" in body.decode()


def test_every_refusal_is_audited_no_role_and_bookkeeping_too(console):
    before = len(console.audit())
    assert curl(console.port, "/", "nobody@mm.example")[0] == 403
    seen = gql(console, VIEWER, "mutation { setNuxSeen }")
    assert "errors" not in seen
    entries = console.audit()[before:]
    assert [(e["actor"], e["action"], e["outcome"]) for e in entries] == [
        ("nobody@mm.example", "console_request", "refused"),
        (VIEWER, "set_nux_seen", "succeeded"),
    ]


def test_refusals_past_a_persons_budget_are_429_with_the_limit_audited(pg_server):
    portal = create_database(pg_server)
    url = pg_server.url(portal)
    try:
        now = [0.0]
        audit_log = ConsoleAudit(url, RefusalLimiter(limit=5, window=60, clock=lambda: now[0]))
        from mm_orchestration.console.access import Identity

        mallory = Identity("mallory@mm.example", "viewer", "proxy")
        for _ in range(5):
            audit_log.write(mallory, "terminate_run", "refused", "r", {})
        for _ in range(20):
            with pytest.raises(RateLimited, match="wait 60 s"):
                audit_log.write(mallory, "terminate_run", "refused", "r", {})
        # Someone else, and what is allowed, are not held up.
        audit_log.write(None, "console_request", "refused", "GET /", {}, peer="127.0.0.9")
        audit_log.write(mallory, "download_report", "succeeded", "x", {})
        now[0] = 61.0
        audit_log.write(mallory, "terminate_run", "refused", "r", {})
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT actor, action FROM ops.audit_log ORDER BY id").fetchall()
        assert rows == [
            *[("mallory@mm.example", "terminate_run")] * 5,
            ("mallory@mm.example", "rate_limited"),
            ("anonymous", "console_request"),
            ("mallory@mm.example", "download_report"),
            ("mallory@mm.example", "terminate_run"),
        ]
    finally:
        drop_database(pg_server, portal)


# -- 6, 7, 9: headers, 4xx, no pop-up ---------------------------------------------------


def test_every_answer_refuses_framing_and_sniffing(console):
    for path, person in (("/", OPERATOR), ("/graphql", OPERATOR), ("/", None), ("/x/../y", ADMIN)):
        _, _, headers = curl(console.port, path, person)
        assert "x-frame-options: deny" in headers, path
        assert "x-content-type-options: nosniff" in headers
        assert "referrer-policy: same-origin" in headers
        csp = next(line for line in headers.splitlines() if line.startswith("content-security"))
        assert "frame-ancestors 'none'" in csp
    # Dagster's own policy for its UI is kept (scripts by nonce), with ours added.
    _, _, headers = curl(console.port, "/", OPERATOR)
    csp = next(line for line in headers.splitlines() if line.startswith("content-security"))
    assert "script-src 'nonce-" in csp and "frame-ancestors 'none'" in csp


def test_bad_requests_get_a_4xx_never_a_500(console):
    proxy = f"{HEADER}: {ADMIN}\r\nX-MM-Proxy-Secret: {SECRET}\r\n".encode()
    for path in (b"/logs/../..", b"/logs/..%2f..%2fetc/passwd", b"/logs/x", b"/logs/",
                 b"/logs/a/b/c.err", b"/notebook?path=/etc/x.ipynb&repoLocName=x",
                 b"/dagit/notebook", b"/download_debug/not-a-run", b"/%ff%fe"):  # fmt: skip
        status, _ = raw_request(
            console.port,
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + proxy + b"Connection: close\r\n\r\n",
        )
        assert 400 <= status < 500 or status == 200, (path, status)
        assert status != 200 or not path.startswith(b"/logs"), path
    deep = "[" * 100_000 + "]" * 100_000
    for path, body in (
        (b"/graphql", deep),
        (b"/graphql", '{"query": ' + deep + "}"),
        (b"/graphql", "{not json"),
        (b"/report_asset_materialization/x", deep),
    ):
        status, answer = raw_request(
            console.port,
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + proxy
            + b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n{body}".encode(),
        )  # fmt: skip
        assert status == 400, (path, body[:20], status, answer[:200])


def test_the_console_never_asks_people_to_join_a_newsletter(console):
    answer = gql(console, VIEWER, "{ shouldShowNux }")
    assert answer["data"]["shouldShowNux"] is False


def test_behind_a_path_the_same_page_answers_whether_the_proxy_strips_it_or_not():
    """`location /jobs/ { proxy_pass http://127.0.0.1:3000; }` passes the path on;
    `proxy_pass http://127.0.0.1:3000/;` strips it: the console serves the same either way,
    and judges origins by the public address alone."""
    import asyncio

    from mm_orchestration.console.front import IdentityFront

    access = ConsoleAccess.from_env(
        {
            "MM_CONSOLE_TRUSTED_PROXIES": "127.0.0.1",
            "MM_CONSOLE_PUBLIC_URL": "https://intranet.mm.example/jobs",
            "MM_CONSOLE_PROXY_SECRET": SECRET,
            "MM_CONSOLE_ROLES": f"{OPERATOR}=operator",
        }
    )
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def through(path: str, host: str, origin: str | None = None) -> int:
        headers = [(b"host", host.encode()), (b"x-auth-request-email", OPERATOR.encode()),
                   (b"x-mm-proxy-secret", SECRET.encode())]  # fmt: skip
        if origin:
            headers.append((b"origin", origin.encode()))
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers,
                 "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 3000)}  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        asyncio.run(IdentityFront(app, access)(scope, receive, send))
        return int(sent[0]["status"])

    origin = "https://intranet.mm.example"
    for path, host in (("/jobs/graphql", "intranet.mm.example"), ("/graphql", "127.0.0.1:3000")):
        assert through(path, host, origin) == 200
    assert seen == ["/jobs/graphql", "/jobs/graphql"]
    assert through("/jobs/graphql", "intranet.mm.example", "https://other.mm.example") == 403
