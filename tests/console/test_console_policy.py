"""The gate without a webserver: what it lets a role set on a run, and that a request it
cannot read is refused with an entry, never a 500 with a stack trace and no entry."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from graphql import parse

from mm_orchestration.console.access import Identity
from mm_orchestration.console.dagster_private import graphql_schema
from mm_orchestration.console.middleware import ConsoleGate

OPERATOR = Identity("olivia@mm.example", "operator", "proxy")
ADMIN = Identity("adam@mm.example", "admin", "proxy")


class Trail:
    """The audit log as the gate uses it, in memory."""

    database_url = "postgresql://unused"

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def write(self, identity, action, outcome, target, details, job_name=None, run_id=None):
        self.entries.append(
            {"actor": identity.person if identity else None, "action": action,
             "outcome": outcome, "target": target, "details": details}
        )  # fmt: skip
        return len(self.entries)

    def refuse(self, identity, action, target, details, peer=None):
        self.write(identity, action, "refused", target, details)
        return None

    def settle(self, entry, outcome, run_id, result):
        self.entries[entry - 1]["outcome"] = outcome
        self.entries[entry - 1]["result"] = result


def call(
    field: str, args: dict[str, Any], identity: Identity, runs: dict[str, Any] | None = None
) -> tuple[Trail, Any, dict[str, Any] | None]:
    """(audit, what the gate answered, the arguments Dagster got: None when not called)."""
    mutation_type = graphql_schema().mutation_type
    source = SimpleNamespace(
        method="POST",
        headers={"content-type": "application/json"},
        scope={"mm.identity": identity},
    )

    def get_run_by_id(run_id: str) -> Any:
        if "\x00" in run_id:
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return (runs or {}).get(run_id)

    context = SimpleNamespace(
        source=source,
        instance=SimpleNamespace(get_run_by_id=get_run_by_id),
        code_locations=[],
    )
    (operation,) = parse(f"mutation {{ {field} }}").definitions
    info = SimpleNamespace(
        operation=operation,
        schema=graphql_schema(),
        fragments={},
        variable_values={},
        path=SimpleNamespace(prev=None),
        context=context,
        field_name=field,
        parent_type=mutation_type,
        return_type=mutation_type.fields[field].type,
    )
    passed: dict[str, Any] = {}

    def next_(root: Any, info: Any, **kwargs: Any) -> Any:
        passed.update(kwargs)
        return SimpleNamespace(run=SimpleNamespace(runId="r1"))

    trail = Trail()
    answer = ConsoleGate(trail).resolve(next_, None, info, **args)  # type: ignore[arg-type]
    return trail, answer, passed or None


def launch(job: str, tags: list[dict[str, str]], config: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "selector": {"repositoryLocationName": "mm_orchestration",
                     "repositoryName": "__repository__", "jobName": job},
        "executionMetadata": {"tags": tags},
    }  # fmt: skip
    if config is not None:
        params["runConfigData"] = config
    return {"executionParams": params}


# Where a run launched from the code location came from (a run of `mm-jobs run` has none).
ORIGIN = SimpleNamespace(
    location_name="mm_orchestration",
    repository_origin=SimpleNamespace(repository_name="__repository__"),
)

CONTROL = [
    {"key": "dagster-k8s/config", "value": '{"container_config": {"image": "evil"}}'},
    {"key": "dagster/max_runtime", "value": "1"},
    {"key": "dagster/priority", "value": "100"},
    {"key": " Dagster/Concurrency_Key", "value": "x"},
    {"key": "dagster-celery/queue", "value": "q"},
    {"key": ".dagster/pool/x", "value": "y"},
    {"key": "mm/window", "value": "2026-11-30T03:30:00Z"},
    {"key": "dagster/partition", "value": "2026-11-23"},
    {"key": "team", "value": "post"},
]


def test_only_admins_set_dagsters_control_tags_and_the_entry_names_what_was_dropped():
    trail, _, passed = call("launchRun", launch("share_link_expiry", CONTROL), OPERATOR)
    assert passed is not None
    tags = {t["key"]: t["value"] for t in passed["executionParams"]["executionMetadata"]["tags"]}
    assert tags == {"dagster/partition": "2026-11-23", "team": "post",
                    "mm/actor": OPERATOR.person}  # fmt: skip
    (entry,) = trail.entries
    assert entry["details"]["dropped_tags"] == sorted(
        t["key"] for t in CONTROL if t["key"] not in ("dagster/partition", "team")
    )
    # An admin may set Dagster's (recorded in the entry's variables); never `mm/`.
    trail, _, passed = call("launchRun", launch("backup_verify", CONTROL), ADMIN)
    assert passed is not None
    kept = {t["key"] for t in passed["executionParams"]["executionMetadata"]["tags"]}
    assert {"dagster-k8s/config", "dagster/priority", "dagster/max_runtime"} <= kept
    assert "mm/window" not in kept
    assert trail.entries[0]["details"]["dropped_tags"] == ["mm/window"]


def test_a_reexecutions_extra_tags_are_held_to_the_same_rule():
    runs = {"p": SimpleNamespace(job_name="share_link_expiry", asset_selection=None, tags={},
                                 remote_job_origin=ORIGIN)}  # fmt: skip
    args = {"reexecutionParams": {"parentRunId": "p", "strategy": "ALL_STEPS",
                                  "extraTags": CONTROL}}  # fmt: skip
    trail, _, passed = call("launchRunReexecution", args, OPERATOR, runs)
    assert passed is not None
    keys = {t["key"] for t in passed["reexecutionParams"]["extraTags"]}
    assert keys == {"dagster/partition", "team", "mm/actor"}
    assert "dagster-k8s/config" in trail.entries[0]["details"]["dropped_tags"]


def test_a_stored_backfill_whose_tags_name_a_partition_is_not_run_again():
    """A backfill's tags replace each of its runs' partition tags: one stored with
    `dagster/partition` (launched before the console refused that) is neither re-executed
    nor resumed; one without is Dagster's to run."""
    from mm_orchestration.console.dagster_private import ContextLookups
    from mm_orchestration.console.policy import decide

    backfills = {
        "old": SimpleNamespace(tags={"dagster/partition": "2099-01-05", "mm/actor": "a"}),
        "fine": SimpleNamespace(tags={"mm/actor": "a"}),
    }
    lookups = ContextLookups(SimpleNamespace(instance=SimpleNamespace(get_backfill=backfills.get)))
    for backfill, refused in (("old", True), ("fine", False)):
        for field, args in (
            ("reexecutePartitionBackfill",
             {"reexecutionParams": {"parentRunId": backfill, "strategy": "ALL_STEPS"}}),
            ("resumePartitionBackfill", {"backfillId": backfill}),
        ):  # fmt: skip
            refusal = decide(field, args, ADMIN, lookups).refusal
            assert bool(refusal) == refused, (field, backfill, refusal)
            if refused:
                assert "tags name a partition (dagster/partition)" in str(refusal)


@pytest.mark.parametrize(
    "config, why",
    [
        ("ops:\n  x:\n    config:\n      note: !!timestamp 2026-13-45\n", "ValueError"),
        ("a: " + "[" * 5000 + "]" * 5000, "RecursionError"),
    ],
)
def test_run_config_the_gate_cannot_read_is_refused_with_an_entry(config, why):
    trail, answer, passed = call("launchRun", launch("share_link_expiry", [], config), OPERATOR)
    assert passed is None
    assert type(answer).__name__ == "GraphenePythonError"
    assert "the run config could not be read" in answer._message and why in answer._message
    (entry,) = trail.entries
    assert entry["outcome"] == "refused"
    assert "could not be read" in entry["details"]["refusal"]


def test_a_request_whose_judging_raises_is_refused_and_audited():
    args = {"reexecutionParams": {"parentRunId": "a\x00b", "strategy": "ALL_STEPS"}}
    trail, answer, passed = call("launchRunReexecution", args, OPERATOR)
    assert passed is None
    assert "could not be judged (ValueError)" in answer._message
    (entry,) = trail.entries
    assert (entry["action"], entry["outcome"], entry["details"]["error"]) == (
        "reexecute_run",
        "refused",
        "ValueError",
    )


def test_run_config_dagster_rejects_is_recorded_with_its_errors():
    from mm_orchestration.console.middleware import _outcome

    class Invalid:
        class _meta:  # graphene's name
            name = "RunConfigValidationInvalid"
            interfaces = (
                SimpleNamespace(_meta=SimpleNamespace(name="PipelineConfigValidationInvalid")),
            )

        errors = [SimpleNamespace(message='Missing required config entry "ops" password=x')]

    outcome, run_id, result = _outcome(Invalid())
    assert outcome == "failed" and run_id is None
    assert result["errors"] == ['Missing required config entry "ops" password=***']
    assert result["message"].startswith("Missing required")


def test_mutation_typename_passes_and_a_refusal_is_a_client_error_without_a_trace():
    from graphql import GraphQLError, located_error

    from mm_orchestration.console.dagster_private import HookedWebserver
    from mm_orchestration.console.middleware import ConsoleRefusal
    from mm_orchestration.console.webserver import ConsoleHooks

    (operation,) = parse("mutation { __typename }").definitions
    info = SimpleNamespace(
        operation=operation,
        path=SimpleNamespace(prev=None),
        field_name="__typename",
    )
    trail = Trail()
    gate = ConsoleGate(trail)  # type: ignore[arg-type]
    assert gate.resolve(lambda root, info: "Mutation", None, info) == "Mutation"  # type: ignore[arg-type]
    assert trail.entries == []

    try:
        raise ConsoleRefusal("viewer may not stop schedule (x)")
    except ConsoleRefusal as exc:
        refusal = located_error(exc, None, ["stopSensor"])
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        fault = located_error(exc, None, ["x"])
    server = object.__new__(HookedWebserver)
    server._hooks = ConsoleHooks(trail, None)  # type: ignore[arg-type]
    assert server._determine_status_code([refusal], []) == 400
    assert server._determine_status_code([refusal, fault], []) == 500
    (shown,) = server.handle_graphql_errors([refusal])
    assert shown["message"] == "viewer may not stop schedule (x)"
    assert "errorInfo" not in str(shown)
    assert isinstance(refusal, GraphQLError)


# -- development mode answers only to its loopback names --------------------------------


def _through_front(host: str | None, origin: str | None = None, method: str = "GET") -> int:
    import asyncio

    from mm_orchestration.console.access import ConsoleAccess
    from mm_orchestration.console.front import IdentityFront

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    headers = [(b"host", host.encode())] if host is not None else []
    if origin:
        headers.append((b"origin", origin.encode()))
    headers.append((b"x-forwarded-host", b"attacker.example:3000"))
    scope = {
        "type": "http",
        "method": method,
        "path": "/graphql",
        "headers": headers,
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 3000),
        "scheme": "http",
    }
    sent: list[dict[str, Any]] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    front = IdentityFront(app, ConsoleAccess(mode="local", local_user="dev"))
    asyncio.run(front(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    "host", ["localhost:3000", "127.0.0.1:3000", "[::1]:3000", "127.1:3000", "LOCALHOST:3000"]
)
def test_local_mode_serves_its_loopback_names(host):
    assert _through_front(host) == 200
    assert _through_front(host, origin=f"http://{host.lower()}", method="POST") == 200


@pytest.mark.parametrize(
    "host",
    ["attacker.example:3000", "attacker.example", "localhost:4000", "127.0.0.1.nip.io:3000",
     "localhost@attacker.example:3000", "", None, "localhost:x"],
)  # fmt: skip
def test_local_mode_refuses_any_other_host_dns_rebinding_included(host):
    """A page that points its own name at 127.0.0.1 is same-origin to the browser (its
    Origin matches its Host): only the Host gives it away."""
    assert _through_front(host, origin=f"http://{host}", method="POST") == 421


def test_local_mode_ignores_a_forwarded_host_the_client_sent():
    # Origin of the attacker, X-Forwarded-Host forged to match it: still another site.
    assert _through_front("localhost:3000", "http://attacker.example:3000", "POST") == 403


def test_a_cut_audit_trail_download_says_so_in_a_header_and_its_last_row(monkeypatch):
    import asyncio

    import pandas as pd
    from starlette.requests import Request

    from mm_orchestration.console import routes
    from mm_orchestration.features.audit_trail import query as audit_trail

    cut = audit_trail.Entries(pd.DataFrame([], columns=audit_trail.COLUMNS), True)
    monkeypatch.setattr(audit_trail, "read", lambda conn, wanted: cut)
    monkeypatch.setattr(routes, "connect", lambda url: _NoConnection())
    trail = Trail()
    server = routes.ConsoleRoutes(trail, None, "Australia/Sydney")  # type: ignore[arg-type]
    scope = {"type": "http", "method": "GET", "path": "/audit-trail.csv",
             "query_string": b"day=2026-11-27", "headers": [], "mm.identity": ADMIN}  # fmt: skip
    response = asyncio.run(server.audit_trail_endpoint(Request(scope)))
    assert response.headers["x-audit-trail-truncated"].startswith("first 0 entries")
    assert b'"[truncated]"' in response.body and b"person=" in response.body
    assert trail.entries[0]["result"] == {"status": 200, "rows": 0, "truncated": True}


class _NoConnection:
    def __enter__(self) -> _NoConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_launch_that_sends_no_config_still_logs_json_lines():
    """The UI's partition dialog sends no run config: the run still gets the JSON run log
    (scheduling.RUN_LOGS), not Dagster's text console. A backfill sends none to give."""
    from mm_orchestration.console.run_requests import apply_config_policy
    from mm_orchestration.platform.scheduling import RUN_LOGS

    selector = {"pipelineName": "tenant_health_check"}
    for params in ({}, {"runConfigData": {}}, {"runConfigData": "{}"}, {"runConfigData": ""}):
        args = {"executionParams": {"selector": selector, **params}}
        apply_config_policy(args, admin=False)
        assert args["executionParams"]["runConfigData"] == RUN_LOGS, params
    backfill = {"backfillParams": {"partitionNames": ["2026-12-06"]}}
    apply_config_policy(backfill, admin=False)
    assert "runConfigData" not in backfill["backfillParams"]
