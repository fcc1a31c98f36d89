"""The console tried again as an operator, a viewer and a script would (issue 22's kinds, a
second pass): each test failed before its fix. Against one real console (tests/console_server.py),
and one served under a path (`https://intranet.mm.example/jobs`)."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import patch

import pytest

from tests.console_server import (
    ADMIN,
    HEADER,
    OPERATOR,
    PUBLIC,
    SECRET,
    VIEWER,
    console_fixture,  # noqa: F401 - the module's console (fixture `console`)
    curl,
    gql,
    raw_request,
    serving_console,
)

CANARY = "canary-secret-value-771"
REPOSITORY = {"repositoryLocationName": "mm_orchestration", "repositoryName": "__repository__"}
LAUNCH = """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  ... on UnauthorizedError { message } } }"""


@contextmanager
def _instance(console: Any) -> Iterator[Any]:
    """Dagster's instance of the console (its storage), opened from this process and
    closed again (its connections must not outlive the module's databases)."""
    from dagster import DagsterInstance

    names = ("DAGSTER_HOME", "DAGSTER_DATABASE_URL")
    with (
        patch.dict(os.environ, {name: console.env[name] for name in names}),
        DagsterInstance.get() as instance,
    ):
        yield instance


def _ws(console: Any, person: str) -> Any:
    from websockets.sync.client import connect

    ws = connect(  # type: ignore[call-overload]
        f"ws://127.0.0.1:{console.port}/graphql",
        subprotocols=["graphql-ws"],
        origin=PUBLIC,
        additional_headers={HEADER: person, "X-MM-Proxy-Secret": SECRET},
    )
    ws.send(json.dumps({"type": "connection_init"}))
    assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
    return ws


def _new_entries(console: Any, before: int) -> list[tuple[str, str, str]]:
    return [(e["actor"], e["action"], e["outcome"]) for e in console.audit()[before:]]


# -- 2: every source of a run's config -------------------------------------------------


def test_a_backfills_run_config_is_under_the_same_policy_as_a_launch(console):
    """`launchPartitionBackfill` takes a run config for all its runs: reading the
    environment is refused (admins too, audited), a resources block is dropped."""
    params = {"assetSelection": [{"path": ["ops", "residency_report"]}],
              "partitionNames": ["2026-11-23"]}  # fmt: skip
    env = {"ops": {"ops__residency_report": {"config": {"x": {"env": "MM_CANARY"}}}}}
    before = len(console.audit())
    answer = gql(console, ADMIN, BACKFILL, {"p": {**params, "runConfigData": env}})
    assert "read an environment variable" in answer["data"]["launchPartitionBackfill"]["message"]
    (entry,) = console.audit()[before:]
    assert (entry["action"], entry["outcome"]) == ("launch_backfill", "refused")
    resources = {"resources": {"portal_db": {"config": {"url": "postgresql://elsewhere/x"}}}}
    answer = gql(console, ADMIN, BACKFILL, {"p": {**params, "runConfigData": resources}})
    backfill = answer["data"]["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    with _instance(console) as instance:
        # What the policy keeps, with the runs' JSON logs named (scheduling.RUN_LOGS).
        assert instance.get_backfill(backfill["backfillId"]).run_config == {
            "loggers": {"console": {}}
        }


def test_re_executing_a_run_judges_the_config_it_takes_from_its_parent(console):
    """A re-execution runs its parent's stored config: a parent that reads the environment
    (a run refused before it was queued, one from before the policy) is not run again."""
    from dagster._core.remote_origin import (
        GrpcServerCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    parent = str(uuid.uuid4())
    config = {"ops": {"expire_due_share_links": {"config": {"force": {"env": "MM_CANARY"}}}}}
    location = GrpcServerCodeLocationOrigin(host="localhost", port=4266, location_name="x")
    with _instance(console) as instance:
        instance.add_run(
            DagsterRun(
                job_name="share_link_expiry",
                run_id=parent,
                run_config=config,
                status=DagsterRunStatus.FAILURE,
                # Launched from a code location (one of `mm-jobs run` is refused for that).
                remote_job_origin=RemoteJobOrigin(
                    RemoteRepositoryOrigin(location, "__repository__"), "share_link_expiry"
                ),
            )
        )
    query = """mutation($r: ReexecutionParams!) { launchRunReexecution(reexecutionParams: $r) {
      __typename ... on PythonError { message } } }"""
    before = len(console.audit())
    answer = gql(console, OPERATOR, query, {"r": {"parentRunId": parent, "strategy": "ALL_STEPS"}})
    result = answer["data"]["launchRunReexecution"]
    assert result["__typename"] == "PythonError"
    assert "read an environment variable" in result["message"]
    assert _new_entries(console, before) == [(OPERATOR, "reexecute_run", "refused")]


# -- a run of a partitioned job names one of its partitions -----------------------------

WEEKS = "weekly partitions from 2025-01-06 to the latest"
PARTITION = "dagster/partition"


def _launch(console: Any, person: str, job: str, tags: dict[str, str], **selector: Any) -> Any:
    params = {
        "selector": {**REPOSITORY, "jobName": job, **selector},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    return gql(console, person, LAUNCH, {"p": params})["data"]["launchPipelineExecution"]


def _runs_of(console: Any, job: str) -> set[str]:
    from dagster import RunsFilter

    with _instance(console) as instance:
        return {r.run_id for r in instance.get_runs(filters=RunsFilter(job_name=job))}


@pytest.mark.parametrize("person", [OPERATOR, ADMIN])
def test_a_partitioned_job_launched_without_a_valid_partition_is_refused_up_front(console, person):
    """The trial's launch of residency_report with no partition tag was taken and the run
    failed. Refused now before any run exists, for any role, naming the job, why, and the
    valid keys and their form: no partition, a week to come, a day that starts no week,
    text that is no date (not quoted back); the same for the asset's own materialisation
    and for a job without partitions given one. A partition the job has is launched."""
    before_runs, before = _runs_of(console, "residency_report"), len(console.audit())
    asset = {"assetSelection": [{"path": ["ops", "residency_report"]}]}
    cases = [
        ("residency_report", {}, {}, "residency_report is partitioned: a run needs a partition"),
        ("residency_report", {PARTITION: "2099-01-05"}, {},
         "2099-01-05 is after the latest partition"),
        ("residency_report", {PARTITION: "2026-11-24"}, {},
         "2026-11-24 does not start one of its partitions"),
        ("residency_report", {PARTITION: "s3cret-canary"}, {},
         "it is not in the form YYYY-MM-DD (the value is not shown)"),
        ("__ASSET_JOB", {}, asset, "ops/residency_report is partitioned: a run needs a partition"),
    ]  # fmt: skip
    for job, tags, selector, why in cases:
        answer = _launch(console, person, job, tags, **selector)
        assert answer["__typename"] == "PythonError", (job, tags, answer)
        assert why in answer["message"], answer["message"]
        assert WEEKS in answer["message"] and "YYYY-MM-DD, each week's Monday" in answer["message"]
        assert "partition picker" in answer["message"] and "canary" not in answer["message"]
    answer = _launch(console, person, "share_link_expiry", {PARTITION: "2026-11-23"})
    assert answer["message"] == "share_link_expiry has no partitions: run it without one"
    entries = console.audit()[before:]
    assert [(e["actor"], e["action"], e["outcome"]) for e in entries] == [
        (person, "launch_run", "refused")
    ] * (len(cases) + 1)
    assert "a run needs a partition" in entries[0]["details"]["refusal"]
    assert _runs_of(console, "residency_report") == before_runs  # no run was made
    answer = _launch(console, person, "residency_report", {PARTITION: "2026-11-23"})
    assert answer["__typename"] == "LaunchRunSuccess", answer


def test_partition_ranges_batches_and_backfills_are_judged_the_same(console):
    """A range reaching into the future (the console spent over a minute on one), ends out of
    order, a batch with one bad run, and backfills of weeks to come, of no partitions, of an
    asset without partitions, or over a range to come: each refused with why, nothing made."""
    start, end = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
    for tags, why in (
        ({start: "2026-11-01-00:00", end: "2099-11-01-00:00"},
         "the range's last partition is not one of analytics_rollup's: 2099-11-01-00:00 is "
         "after the latest partition"),
        ({start: "2026-11-01-03:00", end: "2026-11-01-00:00"},
         "the range of analytics_rollup starts at 2026-11-01-03:00, after its end"),
    ):  # fmt: skip
        answer = _launch(console, ADMIN, "analytics_rollup", tags)
        assert why in answer.get("message", ""), answer
    many = """mutation($l: [ExecutionParams!]!) { launchMultipleRuns(executionParamsList: $l) {
      __typename ... on PythonError { message } } }"""
    good = {
        "selector": {**REPOSITORY, "jobName": "residency_report"},
        "executionMetadata": {"tags": [{"key": PARTITION, "value": "2026-11-23"}]},
    }
    bad = {"selector": {**REPOSITORY, "jobName": "residency_report"}}  # fmt: skip
    answer = gql(console, ADMIN, many, {"l": [good, bad]})["data"]["launchMultipleRuns"]
    assert "residency_report is partitioned: a run needs a partition" in answer["message"]

    residency = {"assetSelection": [{"path": ["ops", "residency_report"]}]}
    weeks = {"partitionSetName": "residency_report_partition_set",
             "repositorySelector": REPOSITORY}  # fmt: skip
    ahead = {"start": "2099-01-05", "end": "2099-02-02"}
    for params, why in (
        ({**residency, "partitionNames": ["2026-11-23", "2099-01-05"]},
         "1 of the 2 partitions asked for are not ops/residency_report's (2099-01-05 is "
         "after the latest partition"),
        ({"selector": weeks, "partitionNames": ["2099-01-05"]},
         "the partition asked for is not residency_report's"),
        ({"selector": weeks}, "a backfill of residency_report names no partitions"),
        ({"assetSelection": [{"path": ["ops", "job_health"]}], "partitionNames": ["x"]},
         "ops/job_health has no partitions: materialise it instead"),
        ({"partitionsByAssets": [{"assetKey": {"path": ["ops", "residency_report"]},
                                  "partitions": {"range": ahead}}]},
         "the range's first partition is not one of ops/residency_report's"),
    ):  # fmt: skip
        answer = gql(console, ADMIN, BACKFILL, {"p": params})["data"]["launchPartitionBackfill"]
        assert why in answer.get("message", ""), (params, answer)
    answer = gql(console, ADMIN, BACKFILL, {"p": {"selector": weeks,
                                                  "partitionNames": ["2026-11-23"]}})  # fmt: skip
    assert answer["data"]["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess"


REEXECUTE = """mutation($r: ReexecutionParams!) { launchRunReexecution(reexecutionParams: $r) {
  __typename ... on LaunchRunSuccess { run { runId tags { key value } } }
  ... on PythonError { message } } }"""
RERUN = """mutation($p: ExecutionParams!) { launchPipelineReexecution(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def _reexecute(console: Any, person: str, parent: str, tags: dict[str, str], **more: Any) -> Any:
    params = {"parentRunId": parent, "strategy": "ALL_STEPS",
              "extraTags": [{"key": k, "value": v} for k, v in tags.items()], **more}  # fmt: skip
    return gql(console, person, REEXECUTE, {"r": params})["data"]["launchRunReexecution"]


def test_a_reexecution_is_judged_by_the_partition_it_will_really_run(console):
    """The trial re-executed a residency_report run of 2026-11-16 with extraTags naming
    2099-01-05: taken, audited `succeeded`, and only the run coordinator failed the run (and
    compliance was emailed). A re-execution runs its parent's tags with the extraTags
    upserted over them (or without the parent's, useParentRunTags false), and an
    executionParams re-execution only the tags it sends: each judged as that, refused up
    front and audited; a good one still runs the partition it names. A backfill's tags
    naming a partition (which would replace each of its runs' own) are refused too."""
    start, end = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
    parent = _launch(console, OPERATOR, "residency_report", {PARTITION: "2026-11-16"})
    assert parent["__typename"] == "LaunchRunSuccess", parent
    parent_id = parent["run"]["runId"]
    before_runs, before = _runs_of(console, "residency_report"), len(console.audit())
    cases = [
        ({PARTITION: "2099-01-05"}, {}, "2099-01-05 is after the latest partition"),
        ({PARTITION: "2026-11-24"}, {}, "2026-11-24 does not start one of its partitions"),
        # Range tags beside the parent's partition tag: the run would name both.
        ({start: "2026-11-16", end: "2026-11-23"}, {},
         "names both a partition and a partition range"),
        ({}, {"useParentRunTags": False},
         "residency_report is partitioned: a run needs a partition"),
    ]  # fmt: skip
    for tags, more, why in cases:
        answer = _reexecute(console, OPERATOR, parent_id, tags, **more)
        assert answer["__typename"] == "PythonError", (tags, answer)
        assert why in answer["message"], answer["message"]
        assert "parent run's" in answer["message"]
    # Re-executed by executionParams, a run has only the tags sent: none is no partition.
    params = {"selector": {**REPOSITORY, "jobName": "residency_report"},
              "executionMetadata": {"parentRunId": parent_id, "rootRunId": parent_id}}  # fmt: skip
    answer = gql(console, OPERATOR, RERUN, {"p": params})["data"]["launchPipelineReexecution"]
    assert "residency_report is partitioned: a run needs a partition" in answer["message"]
    # A backfill's tags would replace every one of its runs' partitions.
    weeks = {"partitionSetName": "residency_report_partition_set",
             "repositorySelector": REPOSITORY}  # fmt: skip
    backfill = {"selector": weeks, "partitionNames": ["2026-11-23"],
                "tags": [{"key": PARTITION, "value": "2099-01-05"}]}  # fmt: skip
    answer = gql(console, ADMIN, BACKFILL, {"p": backfill})["data"]["launchPartitionBackfill"]
    assert "a backfill's tags may not name a partition (dagster/partition)" in answer["message"]
    entries = console.audit()[before:]
    assert [(e["actor"], e["action"], e["outcome"]) for e in entries] == [
        (OPERATOR, "reexecute_run", "refused")
    ] * (len(cases) + 1) + [(ADMIN, "launch_backfill", "refused")]
    assert entries[0]["details"]["partitions"] == [{PARTITION: "2099-01-05"}]
    assert _runs_of(console, "residency_report") == before_runs  # no run was made
    # The parent's partition, or another of the job's, is re-executed as asked.
    for tags, runs in (({}, "2026-11-16"), ({PARTITION: "2026-11-23"}, "2026-11-23")):
        answer = _reexecute(console, OPERATOR, parent_id, tags)
        assert answer["__typename"] == "LaunchRunSuccess", answer
        assert {t["key"]: t["value"] for t in answer["run"]["tags"]}[PARTITION] == runs


def _cli_run(console: Any, *args: str) -> str:
    """A run made by `mm-jobs run` in the console's instance (in its own process, with no
    code location behind it): its id."""
    import re

    from tests.local_stack import mm_jobs

    done = mm_jobs(console.env, "run", *args, "--actor", "ops@mm.example", timeout=180)
    found = re.search(r"run id: ([0-9a-f-]{36})", done.stdout)
    assert found, (done.returncode, done.stdout, done.stderr[-2000:])
    return found.group(1)


def test_reexecuting_a_run_of_mm_jobs_run_is_refused_clearly_not_a_500(console):
    """The trial re-executed a run `mm-jobs run` had made from the console: HTTP 500,
    `CheckError: Expected non-None value: None`, and no log line (Dagster re-executes a run
    from the code location it came from; such a run has none). Refused now, for every
    role, saying why and how to run the job again; audited. A re-execution by
    executionParams (the job named, the parent only linked) still runs."""
    parent = _cli_run(console, "share-link-expiry")
    before = len(console.audit())
    again = {"r": {"parentRunId": parent, "strategy": "ALL_STEPS"}}
    for person in (OPERATOR, ADMIN):
        status, body, _ = curl(
            console.port, "/graphql", person, {"query": REEXECUTE, "variables": again}
        )
        assert status == 200, body[:500]
        answer = json.loads(body)["data"]["launchRunReexecution"]
        assert answer["__typename"] == "PythonError", answer
        assert f"run {parent} of share_link_expiry cannot be re-executed" in answer["message"]
        assert "`mm-jobs run share-link-expiry`" in answer["message"]
    assert _new_entries(console, before) == [
        (OPERATOR, "reexecute_run", "refused"), (ADMIN, "reexecute_run", "refused")
    ]  # fmt: skip
    params = {"selector": {**REPOSITORY, "jobName": "share_link_expiry"},
              "executionMetadata": {"parentRunId": parent, "rootRunId": parent}}  # fmt: skip
    answer = gql(console, OPERATOR, RERUN, {"p": params})["data"]["launchPipelineReexecution"]
    assert answer["__typename"] == "LaunchRunSuccess", answer


def test_a_server_error_dagster_answers_is_a_line_of_the_consoles_log(console):
    """Dagster answers what it caught as a 500 (a PythonError) and logs nothing: the
    console writes one JSON line with the error and its traceback (secrets masked)."""
    log = console.data_dir.parent / "console.log"
    query = """mutation($r: ReexecutionParams!) {
      reexecutePartitionBackfill(reexecutionParams: $r) { __typename } }"""
    missing = f"no-such-backfill-password=s3cret{uuid.uuid4().hex[:6]}"
    again = {"r": {"parentRunId": missing, "strategy": "ALL_STEPS"}}
    status, body, _ = curl(console.port, "/graphql", ADMIN, {"query": query, "variables": again})
    assert status == 500, body[:300]
    lines = [json.loads(x) for x in log.read_text().splitlines() if missing[:16] in x]
    (line,) = lines
    assert (line["level"], line["logger"], line["error"]) == ("error", "mm.console", "CheckError")
    assert "No backfill found" in line["event"] and "Traceback" in line["exception"]
    assert "s3cret" not in json.dumps(line)


# -- 4: reads that run code, wherever the selection reaches them ------------------------


def test_a_mutations_result_cannot_run_code_its_role_may_not(console):
    """A reload (an operator's) answers with the location, whose schedules' `futureTicks {
    evaluationResult }` runs each schedule's function: judged as in a query (admins')."""
    query = """mutation { reloadRepositoryLocation(repositoryLocationName: "mm_orchestration") {
      ... on WorkspaceLocationEntry { locationOrLoadError { ... on RepositoryLocation {
      repositories { schedules { futureTicks(limit: 1) { results { evaluationResult {
      skipReason } } } } } } } } } }"""
    before = len(console.audit())
    answer = gql(console, OPERATOR, query)
    assert "operator may not evaluate tick" in json.dumps(answer["errors"])
    location = answer["data"]["reloadRepositoryLocation"]["locationOrLoadError"]
    ticks = [
        t for s in location["repositories"][0]["schedules"] for t in s["futureTicks"]["results"]
    ]
    assert ticks and all(t["evaluationResult"] is None for t in ticks)
    assert _new_entries(console, before) == [
        (OPERATOR, "reload_location", "succeeded"),
        (OPERATOR, "evaluate_tick", "refused"),
    ]


def test_a_subscription_cannot_run_code(console):
    """Dagster runs subscriptions without the gate: a viewer's run-log subscription whose
    selection reaches a schedule's `evaluationResult` (run -> assets -> jobs -> schedules)
    is refused whole, and audited."""
    run = gql(console, ADMIN, LAUNCH, {"p": {"selector": {**REPOSITORY, "jobName": "__ASSET_JOB",
              "assetSelection": [{"path": ["ops", "job_health"]}]}}})  # fmt: skip
    run_id = run["data"]["launchPipelineExecution"]["run"]["runId"]
    query = """subscription($r: ID!) { pipelineRunLogs(runId: $r) {
      ... on PipelineRunLogsSubscriptionSuccess { run { ...R } } } }
      fragment R on Run { assets { definition { jobs { schedules {
      futureTick(tickTimestamp: 1900000000) { evaluationResult { skipReason } } } } } } }"""
    before = len(console.audit())
    with _ws(console, VIEWER) as ws:
        ws.send(json.dumps({"type": "start", "id": "1",
                            "payload": {"query": query, "variables": {"r": run_id}}}))  # fmt: skip
        answer = json.loads(ws.recv(timeout=30))
    assert answer["type"] == "error", answer
    assert "may not select fields that run code" in answer["payload"]["message"]
    assert _new_entries(console, before) == [(VIEWER, "websocket_operation", "refused")]


# -- 7: bad input is the client's error ------------------------------------------------


@pytest.mark.parametrize(
    "method, path, content_type, body",
    [
        ("GET", "/graphql?query=%7B__typename%7D&variables=%5B1%5D", None, None),
        ("GET", "/graphql?query=%7B__typename%7D&variables=" + "%5B" * 5000 + "%5D" * 5000,
         None, None),
        ("POST", "/graphql", "application/json",
         json.dumps({"query": "{ __typename }", "variables": "[1]"})),
        ("POST", "/graphql", "application/json",
         json.dumps({"query": "{ __typename }", "variables": "[" * 100_000 + "]" * 100_000})),
        ("POST", "/graphql", "application/graphql", b"{ __typename \xff }"),
        ("POST", "/graphql", "application/json",
         json.dumps({"query": 'subscription { pipelineRunLogs(runId: "x") { __typename } }'})),
        ("POST", "/graphql", "application/json",
         json.dumps({"query": '{ runOrError(runId: "a\\u0000b") { __typename } }'})),
        ("POST", "/graphql", "application/json",
         json.dumps({"query": "query($k: [String!]!) { capturedLogs(logKey: $k) { stdout } }",
                     "variables": {"k": ["..", "..", "..", "etc", "passwd"]}})),
        ("POST", "/graphql", "application/json",
         json.dumps({"query": "query($k: [String!]!) { capturedLogsMetadata(logKey: $k) "
                              "{ stdoutLocation } }", "variables": {"k": ["a/b", "c"]}})),
    ],
)  # fmt: skip
def test_odd_graphql_requests_get_a_4xx_never_a_500(console, method, path, content_type, body):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{HEADER}: {VIEWER}\r\n"
    head += f"X-MM-Proxy-Secret: {SECRET}\r\nConnection: close\r\n"
    payload = body.encode() if isinstance(body, str) else body or b""
    if content_type:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
    status, answer = raw_request(console.port, head.encode() + b"\r\n" + payload)
    assert status == 400, (status, answer[:300])
    assert b"Traceback" not in answer and b"errorInfo" not in answer


@pytest.mark.parametrize(
    "message",
    ["not json", "[1]", "7", {"type": "start", "id": "1"},
     {"type": "start", "id": "1", "payload": [1]},
     {"type": "start", "id": "1", "payload": {"query": 1}},
     {"type": "start", "id": "1", "payload": {"query": "subscription { locationStateChangeEvents "
      "{ __typename } }", "variables": [1]}},
     {"type": "stop", "id": [1]}],
)  # fmt: skip
def test_a_websocket_message_outside_the_protocol_closes_it_with_4400(console, message):
    from websockets.exceptions import ConnectionClosed

    with _ws(console, VIEWER) as ws:
        ws.send(message if isinstance(message, str) else json.dumps(message))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


# -- 1: behind a path, one answer -------------------------------------------------------


@pytest.fixture(scope="module")
def prefixed(pg_server, tmp_path_factory, console) -> Iterator[int]:
    """A second console on the first one's databases, served under /jobs."""
    env = {**console.env, "MM_CONSOLE_PUBLIC_URL": "https://intranet.mm.example/jobs"}
    with serving_console(env, tmp_path_factory.mktemp("prefixed") / "console.log") as port:
        yield port


@pytest.mark.parametrize("path", ["/jobs/whoami", "/whoami"])
def test_behind_a_path_the_consoles_own_pages_answer_not_the_uis(prefixed, path):
    """`/jobs/whoami`, `/jobs/audit-trail.csv`, `/jobs/reports/...` are the console's, whether
    the proxy passes the path on or strips it; the UI's page does not answer for them."""
    status, body, headers = curl(prefixed, path, VIEWER)
    assert status == 200 and json.loads(body)["person"] == VIEWER
    status, body, headers = curl(prefixed, path.replace("whoami", "audit-trail.csv"), VIEWER)
    assert status == 200 and "text/csv" in headers
    status, body, _ = curl(prefixed, path.replace("whoami", "reports/none.csv"), VIEWER)
    assert status == 404 and b"<html" not in body.lower()


@pytest.mark.parametrize("host", ["127.0.0.1:3000", "intranet.mm.example", "internal:8080"])
def test_a_redirect_sends_the_browser_to_the_public_address(prefixed, host):
    """`/jobs` redirects to `/jobs/`: at the public address (https, its host), whatever the
    proxy forwarded as Host and whatever scheme it spoke to us."""
    head = f"GET /jobs HTTP/1.1\r\nHost: {host}\r\n{HEADER}: {VIEWER}\r\n"
    head += f"X-MM-Proxy-Secret: {SECRET}\r\n"
    request = (head + "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", prefixed), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower().splitlines()
    assert lines[0].split()[1].startswith("30"), lines
    location = next(line for line in lines if line.startswith("location:"))
    assert location == "location: https://intranet.mm.example/jobs/", location
