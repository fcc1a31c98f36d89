"""The console front: who the console believes, what each role may do, and the audit entry
every action writes before it happens, against one real console (tests/console_server.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from mm_orchestration.console.access import ConsoleAccess, Identity
from mm_orchestration.console.mutations import MUTATIONS
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.settings import Settings, SettingsError
from tests.console_server import (
    ADMIN,
    COMPLIANCE,
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
)

STOP_SCHEDULE = """
mutation($id: String!) { stopRunningSchedule(id: $id) {
  __typename ... on ScheduleStateResult { scheduleState { status } }
  ... on UnauthorizedError { message } ... on PythonError { message } } }
"""
SCHEDULE_ID = """
query { scheduleOrError(scheduleSelector: {repositoryLocationName: "mm_orchestration",
  repositoryName: "__repository__", scheduleName: "invite_cleanup_schedule"}) {
  ... on Schedule { id scheduleState { id selectorId status } } } }
"""
PERMISSIONS = """
query { permissions { permission value } }
"""


# -- what is classified, and the settings ---------------------------------------------


def test_every_mutation_of_the_pinned_dagster_is_classified():
    """An upgrade that adds a mutation fails here until mutations.py says what it is."""
    from mm_orchestration.console.dagster_private import graphql_schema

    mutation_type = graphql_schema().mutation_type
    assert mutation_type is not None
    assert set(mutation_type.fields) - set(MUTATIONS) == set(), "unclassified mutations"
    assert set(MUTATIONS) - set(mutation_type.fields) == set(), "classified but gone"


def test_roles_and_identity_settings_are_checked_at_start(tmp_path):
    with pytest.raises(SettingsError, match="MM_CONSOLE_TRUSTED_PROXIES"):
        ConsoleAccess.from_env({"MM_CONSOLE_AUTH": "proxy"})
    with pytest.raises(SettingsError, match="MM_CONSOLE_AUTH"):
        ConsoleAccess.from_env({"MM_CONSOLE_AUTH": "none"})
    with pytest.raises(SettingsError, match="MM_CONSOLE_ROLES: .*superuser"):
        ConsoleAccess.from_env(
            {"MM_CONSOLE_TRUSTED_PROXIES": "127.0.0.1", "MM_CONSOLE_ROLES": "a@x.io=superuser"}
        )
    with pytest.raises(SettingsError, match="MM_CONSOLE_TRUSTED_PROXIES: 'proxy.local'"):
        ConsoleAccess.from_env({"MM_CONSOLE_TRUSTED_PROXIES": "proxy.local"})
    roles_file = tmp_path / "roles.yaml"
    roles_file.write_text("admin: [ann@x.io]\nviewer: ['*@x.io']\n")
    access = ConsoleAccess.from_env(
        {
            **PROXY,
            "MM_CONSOLE_TRUSTED_PROXIES": "10.0.0.0/24, ::1",
            "MM_CONSOLE_ROLES_FILE": str(roles_file),
            "MM_CONSOLE_ROLES": "ben@x.io=operator",
        }
    )
    assert [access.role_of(p) for p in ("Ann@x.io", "ben@x.io", "cat@x.io", "dan@y.io")] == [
        "admin",
        "operator",
        "viewer",
        None,  # unknown people get nothing
    ]
    proven = {"x-mm-proxy-secret": SECRET}
    headers = {"x-auth-request-email": "ann@x.io", **proven}
    assert access.identify("10.0.0.7", headers) == Identity("ann@x.io", "admin", "proxy")
    assert access.identify("10.0.1.7", headers) is None  # not the proxy: header ignored
    assert access.identify("10.0.0.7", proven) is None
    assert access.identify("10.0.0.7", {"x-auth-request-email": "a b@x.io", **proven}) is None
    # The proxy's address without the proxy's secret is any process on its machine.
    assert access.identify("10.0.0.7", {"x-auth-request-email": "ann@x.io"}) is None
    wrong = {"x-auth-request-email": "ann@x.io", "x-mm-proxy-secret": SECRET[:-1] + "!"}
    assert access.identify("10.0.0.7", wrong) is None
    twice = [("x-auth-request-email", "ann@x.io"), *proven.items(), *proven.items()]
    assert access.identify("10.0.0.7", twice) is None
    roles_file.write_text("admin: [ben@x.io]\n")
    with pytest.raises(SettingsError, match="ben@x.io the role operator.*gives them admin"):
        ConsoleAccess.from_env(
            {
                "MM_CONSOLE_TRUSTED_PROXIES": "127.0.0.1",
                "MM_CONSOLE_ROLES_FILE": str(roles_file),
                "MM_CONSOLE_ROLES": "ben@x.io=operator",
            }
        )
    with pytest.raises(SettingsError, match="MM_CONSOLE_ROLES_FILE=.*cannot be read"):
        ConsoleAccess.from_env(
            {"MM_CONSOLE_TRUSTED_PROXIES": "127.0.0.1", "MM_CONSOLE_ROLES_FILE": "/nonexistent"}
        )


PROXY = {
    "MM_CONSOLE_TRUSTED_PROXIES": "127.0.0.1",
    "MM_CONSOLE_PUBLIC_URL": PUBLIC,
    "MM_CONSOLE_PROXY_SECRET": SECRET,
}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("admin: [ann@x.io]\nadmin: [ben@x.io]\n", "'admin' is given twice \\(lines 1 and 2\\)"),
        ("admin: [ann@x.io, null]\n", "None is not a person"),
        ("viewer: [yes]\n", "True is not a person"),
        ("operator: [123]\n", "123 is not a person"),
        ("admin: [ann@x.io@evil.io]\n", "is not a person as the proxy names them"),
        ("viewer: ['*@x..io']\n", "is not a person as the proxy names them"),
        ("viewer: ['*@*.io']\n", "is not a person as the proxy names them"),
        ("? [a, b]\n: [ann@x.io]\n", "line 1 has a list or mapping as a key"),
        ("superuser: []\nadmin: [ann@x.io]\n", "'superuser' is not a role"),
        ("1: [ann@x.io]\n", "'1' is not a role"),
    ],
)
def test_a_roles_file_that_could_be_misread_is_refused_at_start(tmp_path, text, problem):
    """Two lists under one role (YAML would keep the last), and entries YAML reads as
    something else than a name, stop the start, naming the setting."""
    roles_file = tmp_path / "roles.yaml"
    roles_file.write_text(text)
    with pytest.raises(SettingsError, match=f"MM_CONSOLE_ROLES_FILE.*{problem}"):
        ConsoleAccess.from_env({**PROXY, "MM_CONSOLE_ROLES_FILE": str(roles_file)})


@pytest.mark.parametrize(
    "proxies",
    ["0.0.0.0/0", "::/0", "10.0.0.1, 0.0.0.0/1", "::ffff:0:0/96",
     # IPv6 that stands for all of IPv4: NAT64, 6to4, IPv4-compatible.
     "64:ff9b::/96", "2002::/16", "::/96", "64:ff9b:1::/48"],
)  # fmt: skip
def test_trusting_everyone_as_the_proxy_is_refused(proxies):
    with pytest.raises(SettingsError, match="MM_CONSOLE_TRUSTED_PROXIES: .*trusts far more"):
        ConsoleAccess.from_env({"MM_CONSOLE_TRUSTED_PROXIES": proxies})
    # A site's own ranges are fine.
    ConsoleAccess.from_env(
        {
            **PROXY,
            "MM_CONSOLE_TRUSTED_PROXIES": (
                "10.0.0.0/8, fd00::/8, ::ffff:10.0.0.1, 2002:a00::/24, ::1"
            ),
        }
    )


@pytest.mark.parametrize(
    "header", ["Host", "User-Agent", "X-Forwarded-For", "x-real-ip", "Cookie", "Sec-Fetch-Site"]
)
def test_an_identity_header_clients_set_themselves_is_refused(header):
    with pytest.raises(SettingsError, match=f"MM_CONSOLE_IDENTITY_HEADER={header} is a header"):
        ConsoleAccess.from_env({**PROXY, "MM_CONSOLE_IDENTITY_HEADER": header})
    access = ConsoleAccess.from_env(
        {**PROXY, "MM_CONSOLE_IDENTITY_HEADER": "Cf-Access-Authenticated-User-Email"}
    )
    assert access.header == "Cf-Access-Authenticated-User-Email"


def test_a_whole_domain_covers_only_addresses_of_that_domain():
    access = ConsoleAccess.from_env({**PROXY, "MM_CONSOLE_ROLES": "*@x.com=viewer; ann=admin"})
    assert access.role_of("bea@x.com") == "viewer"
    assert access.role_of("a@evil.com@x.com") is None  # no address at all
    assert access.role_of("a@sub.x.com") is None and access.role_of("a@evilx.com") is None
    assert access.role_of("ann") == "admin"  # a user name, as some proxies give
    headers = {"x-auth-request-email": "a@evil.com@x.com", "x-mm-proxy-secret": SECRET}
    assert access.identify("127.0.0.1", headers) == Identity("a@evil.com@x.com", None, "proxy")
    with pytest.raises(SettingsError, match="MM_CONSOLE_ROLES: 'a@b@x.com'"):
        ConsoleAccess.from_env({**PROXY, "MM_CONSOLE_ROLES": "a@b@x.com=admin"})


def test_secrets_are_masked_in_audited_variables():
    from mm_orchestration.platform.audit import masked

    assert masked(
        {
            "runConfigData": "ops:\n  send:\n    config:\n      api_key: SG.abc\n      n: 3\n",
            "tags": [{"key": "sendgrid/token", "value": "t0k"}, {"key": "mm/job", "value": "x"}],
            "url": "postgresql://jobs:hunter2@db.example/portal",
            "password": "p",
        }
    ) == {
        "runConfigData": {"ops": {"send": {"config": {"api_key": "***", "n": 3}}}},
        "tags": [{"key": "sendgrid/token", "value": "***"}, {"key": "mm/job", "value": "x"}],
        "url": "postgresql://jobs:***@db.example/portal",
        "password": "***",
    }


# -- one console, this module's databases ------------------------------------------------


# -- who is believed ------------------------------------------------------------------


def test_no_identity_is_refused_with_a_page_and_health_checks_still_answer(console):
    status, body, headers = curl(console.port, "/", source="127.0.0.2")
    assert status == 401 and b"Sign-in required" in body and "text/html" in headers
    # From an address that is not the proxy's, the header is ignored: still 401.
    for path in ("/", "/graphql", "/reports/x.csv", "/audit-trail.csv"):
        assert curl(console.port, path, ADMIN, source="127.0.0.2")[0] == 401, path
    # The proxy without a header (or with nonsense) is no better.
    assert curl(console.port, "/")[0] == 401
    assert curl(console.port, "/", "not a person")[0] == 401
    status, body, _ = curl(console.port, "/", "stranger@mm.example")
    assert status == 403 and b"stranger@mm.example" in body and b"no role" in body
    assert curl(console.port, "/server_info", source="127.0.0.2")[0] == 200
    status, body, _ = curl(console.port, "/", OPERATOR)
    assert status == 200 and b"Signed in as olivia@mm.example (operator)" in body
    # Two identity headers (one the browser's, one the proxy's): nobody for certain.
    doubled = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"{HEADER}: {ADMIN}",
         "-H", f"{HEADER}: {VIEWER}", "-H", f"X-MM-Proxy-Secret: {SECRET}",
         f"http://127.0.0.1:{console.port}/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert doubled.stdout == "401"
    # Trust is the connection's own address: X-Forwarded-For changes nothing either way.
    status, _, _ = curl(console.port, "/", ADMIN, source="127.0.0.2", forwarded="127.0.0.1")
    assert status == 401
    status, _, _ = curl(console.port, "/", ADMIN, forwarded="203.0.113.9")
    assert status == 200
    assert json.loads(curl(console.port, "/whoami", OPERATOR)[1])["role"] == "operator"


def test_each_role_sees_its_own_permissions(console):
    def allowed(person: str) -> set[str]:
        rows = gql(console, person, PERMISSIONS)["data"]["permissions"]
        return {r["permission"] for r in rows if r["value"]}

    assert allowed(VIEWER) == set()
    assert allowed(COMPLIANCE) == set()  # a viewer's rights, and the evidence bundles
    assert allowed(OPERATOR) == {
        "launch_pipeline_execution",
        "launch_pipeline_reexecution",
        "reload_repository_location",
        "reload_workspace",
    }
    assert {"stop_running_schedule", "wipe_assets", "terminate_pipeline_execution"} <= allowed(
        ADMIN
    )


# -- launches ------------------------------------------------------------------------


def test_a_launch_over_plain_http_is_audited_with_the_person_before_it_runs(console):
    # The client's own mm/actor is replaced by the person the proxy named.
    result = gql(
        console,
        OPERATOR,
        LAUNCH,
        {"p": launch_params("share_link_expiry", [{"key": "mm/actor", "value": "mallory"}])},
    )["data"]["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    run_id = result["run"]["runId"]
    tags = {t["key"]: t["value"] for t in result["run"]["tags"]}
    assert tags["mm/actor"] == OPERATOR
    (entry,) = console.audit("run_id = %s", [run_id])
    assert (entry["actor"], entry["role"], entry["action"], entry["target"]) == (
        OPERATOR,
        "operator",
        "launch_run",
        "share_link_expiry",
    )
    assert (entry["job_name"], entry["outcome"]) == ("share-link-expiry", "succeeded")
    assert entry["details"]["via"] == "graphql POST"
    # What the client sent is kept, as sent.
    sent = entry["details"]["variables"]["executionParams"]["executionMetadata"]["tags"]
    assert sent == [{"key": "mm/actor", "value": "mallory"}]


def test_a_launch_dagster_rejects_is_audited_as_failed(console):
    params = launch_params("notification_digest")
    params["runConfigData"] = {"ops": {"no_such_op": {"config": {}}}}
    result = gql(console, OPERATOR, LAUNCH, {"p": params})["data"]["launchPipelineExecution"]
    assert result["__typename"] == "RunConfigValidationInvalid"
    (entry,) = console.audit("target = 'notification_digest'")
    assert (entry["actor"], entry["outcome"], entry["run_id"]) == (OPERATOR, "failed", None)
    assert entry["details"]["result"]["type"] == "RunConfigValidationInvalid"


def test_an_operator_may_not_launch_the_drill_and_the_refusal_is_audited(console):
    result = gql(console, OPERATOR, LAUNCH, {"p": launch_params("backup_verify")})
    answer = result["data"]["launchPipelineExecution"]
    assert answer == {
        "__typename": "PythonError",
        "message": "operator may not launch backup_verify",
    }
    (entry,) = console.audit("action = 'launch_run' AND target = 'backup_verify'")
    assert (entry["actor"], entry["role"], entry["outcome"], entry["run_id"]) == (
        OPERATOR,
        "operator",
        "refused",
        None,
    )
    assert entry["details"]["refusal"] == "operator may not launch backup_verify"
    # A viewer may launch nothing.
    answer = gql(console, VIEWER, LAUNCH, {"p": launch_params("share_link_expiry")})
    assert answer["data"]["launchPipelineExecution"]["message"] == (
        "viewer may not launch share_link_expiry"
    )


def test_a_selector_naming_two_jobs_is_judged_by_both(console):
    """Dagster runs `pipelineName` when a selector names two jobs: an operator may not
    hide the drill behind a job of theirs."""
    params = launch_params("share_link_expiry")
    params["selector"]["pipelineName"] = "backup_verify"
    answer = gql(console, OPERATOR, LAUNCH, {"p": params})["data"]["launchPipelineExecution"]
    assert answer["message"] == "operator may not launch backup_verify|share_link_expiry"
    (entry,) = console.audit("target = 'backup_verify|share_link_expiry'")
    assert entry["outcome"] == "refused"


def test_operators_cannot_point_a_resource_elsewhere(console):
    """A resource's host, key or address in run config would send secrets or reports
    wherever an operator likes: an operator's launch runs with the resources as defined."""
    for config in (
        {"resources": {"mailer": {"config": {"api_host": "http://127.0.0.1:9"}}}},
        "resources:\n  job_settings:\n    config: {compliance_email: x@evil.example}\n",
    ):
        params = {**launch_params("share_link_expiry"), "runConfigData": config}
        answer = gql(console, OPERATOR, LAUNCH, {"p": params})["data"]["launchPipelineExecution"]
        assert answer["__typename"] == "LaunchRunSuccess", answer
        run_id = answer["run"]["runId"]
        status, body, _ = curl(
            console.port,
            "/graphql",
            ADMIN,
            {"query": "query($r: ID!) { runOrError(runId: $r) { ... on Run { runConfigYaml } } }",
             "variables": {"r": run_id}},
        )  # fmt: skip
        assert "resources" not in json.loads(body)["data"]["runOrError"]["runConfigYaml"]


def test_control_tags_from_the_client_are_dropped(console):
    """The ledger's window and trigger, the CLI's pid and Dagster's schedule tag are set
    by the system, never by whoever launches (a forged window would skip a scheduled run)."""
    forged = [
        {"key": "mm/window", "value": "2026-11-30T03:30:00Z"},
        {"key": "mm/trigger", "value": "schedule"},
        {"key": "MM/Actor ", "value": "mallory"},
        {"key": "dagster/schedule_name", "value": "share_link_expiry_schedule"},
        {"key": "dagster/priority", "value": "99"},
        {"key": "dagster-k8s/config", "value": '{"container_config": {"image": "evil"}}'},
        {"key": "team", "value": "post-production"},
    ]
    result = gql(console, OPERATOR, LAUNCH, {"p": launch_params("share_link_expiry", forged)})
    run = result["data"]["launchPipelineExecution"]["run"]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["mm/actor"] == OPERATOR and tags["team"] == "post-production"
    assert tags.get("mm/trigger") != "schedule" and tags.get("mm/window") != forged[0]["value"]
    assert "dagster/schedule_name" not in tags and "MM/Actor " not in tags
    # Dagster's own namespaces are an admin's: priority, and the pod the run gets.
    assert "dagster/priority" not in tags and "dagster-k8s/config" not in tags
    (entry,) = console.audit("run_id = %s", [run["runId"]])
    assert "dagster-k8s/config" in entry["details"]["dropped_tags"]


def test_another_sites_page_cannot_act_as_the_person(console):
    """A page of another site can make the browser POST `text/plain` (no preflight) and
    always names itself in Origin: neither is taken as the person's action."""
    mutation = {"query": LAUNCH, "variables": {"p": launch_params("share_link_expiry")}}
    status, body, _ = curl(
        console.port,
        "/graphql",
        OPERATOR,
        mutation,
        content_type="text/plain;charset=application/json",
    )
    answer = json.loads(body)["data"]["launchPipelineExecution"]
    assert answer["__typename"] != "LaunchRunSuccess", answer
    status, body, _ = curl(
        console.port, "/graphql", OPERATOR, mutation, origin="http://evil.example"
    )
    assert status == 403 and b"another site" in body
    status, _, _ = curl(
        console.port,
        "/report_asset_materialization/ops/job_health",
        ADMIN,
        method="POST",
        origin="http://evil.example",
    )
    assert status == 403
    # The console's own pages send their own origin: its public address.
    status, body, _ = curl(
        console.port, "/graphql", ADMIN, {"query": "{ version }"}, origin=PUBLIC,
    )  # fmt: skip
    assert status == 200, body[:300]


def test_mutations_only_as_a_json_post(console):
    query = quote("mutation { reloadWorkspace { __typename } }")
    status, body, _ = curl(console.port, f"/graphql?query={query}", ADMIN)
    assert json.loads(body)["data"]["reloadWorkspace"]["__typename"] == "UnauthorizedError"
    status, body, _ = curl(
        console.port,
        f"/graphql?query={query}",
        ADMIN,
        body="x=1",
        content_type="application/x-www-form-urlencoded",
    )
    assert json.loads(body)["data"]["reloadWorkspace"]["__typename"] == "UnauthorizedError"
    refused = console.audit("action = 'reload_workspace' AND actor = %s", [ADMIN])
    assert [(e["outcome"], e["details"]["via"]) for e in refused] == [
        ("refused", "graphql GET"),
        ("refused", "graphql POST"),
    ]


def test_the_websocket_carries_subscriptions_only(console):
    from websockets.sync.client import connect

    with connect(
        f"ws://127.0.0.1:{console.port}/graphql",
        subprotocols=["graphql-ws"],  # type: ignore[list-item]
        additional_headers={HEADER: ADMIN, "X-MM-Proxy-Secret": SECRET},
    ) as ws:
        ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "start",
                    "payload": {
                        "query": LAUNCH,
                        "variables": {"p": launch_params("invite_cleanup")},
                    },
                }
            )
        )
        reply = json.loads(ws.recv(timeout=10))
    assert reply["type"] == "error" and "only subscriptions" in reply["payload"]["message"]
    (entry,) = console.audit("action = 'websocket_operation'")
    assert (entry["actor"], entry["outcome"]) == (ADMIN, "refused")


# -- schedules, REST and downloads -----------------------------------------------------


def test_an_admin_stops_a_schedule_an_operator_may_not(console):
    state = gql(console, ADMIN, SCHEDULE_ID)["data"]["scheduleOrError"]["scheduleState"]
    answer = gql(console, OPERATOR, STOP_SCHEDULE, {"id": state["id"]})
    assert answer["data"]["stopRunningSchedule"]["__typename"] == "UnauthorizedError"
    answer = gql(console, ADMIN, STOP_SCHEDULE, {"id": state["id"]})
    assert answer["data"]["stopRunningSchedule"]["scheduleState"]["status"] == "STOPPED"
    entries = console.audit("action = 'stop_schedule'")
    assert {e["target"] for e in entries} == {"invite_cleanup_schedule"}
    assert [(e["actor"], e["role"], e["outcome"]) for e in entries] == [
        (OPERATOR, "operator", "refused"),
        (ADMIN, "admin", "succeeded"),
    ]


def test_reporting_an_asset_over_rest_is_admins_and_audited(console):
    path = "/report_asset_materialization/ops/tenant_health_daily?partition=2026-11-29"
    status, body, _ = curl(console.port, path, OPERATOR, body={"metadata": {"rows": 1}})
    assert status == 403 and b"operator may not" in body
    status, body, _ = curl(console.port, path, ADMIN, body={"metadata": {"rows": 1}})
    assert status == 200, body
    # The asset named in the body (the path left empty), and an answer Dagster refuses:
    # the entry names the asset and ends as Dagster answered, not as we allowed.
    status, body, _ = curl(
        console.port,
        "/report_asset_materialization/",
        ADMIN,
        {"asset_key": ["ops", "tenant_health_daily"], "partition": "2026-11-28"},
        content_type="application/json; charset=utf-8",  # Dagster takes only the bare type
    )
    assert status == 400, body
    entries = console.audit("action = 'report_asset_materialization'")
    assert [(e["actor"], e["outcome"], e["target"]) for e in entries] == [
        (OPERATOR, "refused", "ops/tenant_health_daily"),
        (ADMIN, "succeeded", "ops/tenant_health_daily"),
        (ADMIN, "failed", "ops/tenant_health_daily"),
    ]
    assert entries[1]["details"]["partitions"] == ["2026-11-29"]
    assert entries[2]["details"]["partitions"] == ["2026-11-28"]
    assert entries[2]["details"]["result"]["status"] == 400
    assert "content type" in str(entries[2]["details"]["result"]["answer"])


def test_reports_and_the_audit_trail_download_as_the_person(console):
    settings = Settings.from_env({"MM_DATA_DIR": str(console.data_dir)})
    store = ReportStore.from_settings(settings)
    csv_sha = store.put("residency/2026-W48.csv", b"tenant,region\nacme,ap-southeast-2\n")
    html_sha = store.put("residency/2026-W48.html", b"<html><body>report</body></html>")
    with psycopg.connect(console.database_url) as conn:
        conn.execute(
            """INSERT INTO ops.residency_reports
                   (week_start, storage_uri, sha256, row_count, compliant, html_uri, html_sha256)
               VALUES ('2026-11-23', %s, %s, 1, true, %s, %s)""",
            [
                store.uri("residency/2026-W48.csv"),
                csv_sha,
                store.uri("residency/2026-W48.html"),
                html_sha,
            ],
        )
    status, body, headers = curl(console.port, "/reports/residency/2026-W48.csv", VIEWER)
    assert status == 200 and body.startswith(b"tenant,region")
    assert 'attachment; filename="2026-w48.csv"' in headers
    status, body, headers = curl(console.port, "/reports/residency/2026-W48.html", VIEWER)
    assert status == 200 and "content-disposition: inline" in headers and "sandbox" in headers
    assert curl(console.port, "/reports/residency/nope.csv", VIEWER)[0] == 404
    downloads = console.audit("action = 'download_report'")
    # Named as compliance names reports (the week's partition), the object key kept.
    assert [(e["actor"], e["target"], e["outcome"]) for e in downloads] == [
        (VIEWER, "residency report 2026-11-23 (csv)", "succeeded"),
        (VIEWER, "residency report 2026-11-23 (html)", "succeeded"),
        (VIEWER, "residency/nope.csv", "failed"),
    ]
    assert downloads[2]["details"]["status"] == 404  # the status in the details
    assert downloads[0]["details"]["partitions"] == ["2026-11-23"]
    assert downloads[0]["details"]["object_key"] == "residency/2026-W48.csv"
    status, body, headers = curl(
        console.port, f"/audit-trail.csv?person={VIEWER}&action=download_report", VIEWER
    )
    assert status == 200 and "text/csv" in headers and "attachment" in headers
    lines = body.decode().splitlines()
    assert lines[0].startswith('"occurred_at","actor","role","action"')
    assert len(lines) == 4 and all(VIEWER in line for line in lines[1:])
    for bad in (
        "day=yesterday",
        "day=9999-12-31",
        "day=0001-01-01",
        "since=0001-01-01T00:00",
        "until=9999-12-31T23:59-05:00",
        "since=2026-11-30&until=2026-11-01",
        "since=99999-01-01",
        "person=a%20b",
    ):
        status, body, _ = curl(console.port, f"/audit-trail.csv?{bad}", VIEWER)
        assert status == 400 and body and b"Traceback" not in body, (bad, status, body)
    trail = console.audit("action = 'download_audit_trail'")
    assert {e["outcome"] for e in trail} == {"succeeded"}


def test_a_batch_of_graphql_operations_is_refused_clearly(console):
    before = len(console.audit())
    batch = [{"query": "{ version }"}, {"query": "mutation { reloadWorkspace { __typename } }"}]
    status, body, _ = curl(console.port, "/graphql", ADMIN, batch)
    assert status == 400
    assert "one GraphQL operation per request" in json.loads(body)["errors"][0]["message"]
    # Nothing was done; the refusal is audited, once.
    (entry,) = console.audit()[before:]
    assert (entry["action"], entry["outcome"], entry["actor"]) == (
        "graphql_request",
        "refused",
        ADMIN,
    )
    for body, problem in (
        ({"query": 1}, "query must be"),
        ({"query": "{ version }", "variables": [1]}, "variables must be"),
        ({"query": "{ version }", "operationName": 5}, "operationName must be"),
    ):
        status, answer, _ = curl(console.port, "/graphql", ADMIN, body)
        assert status == 400 and problem in json.loads(answer)["errors"][0]["message"], body


def test_graphiql_names_the_person_too(console):
    done = subprocess.run(
        ["curl", "-s", "-H", f"{HEADER}: {OPERATOR}", "-H", "Accept: text/html",
         "-H", f"X-MM-Proxy-Secret: {SECRET}", f"http://127.0.0.1:{console.port}/graphql"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Signed in as olivia@mm.example (operator)" in done.stdout


# -- the gate's judgement, without a server -------------------------------------------


def test_materialising_assets_is_judged_by_the_assets_and_names_the_partitions():
    from mm_orchestration.console.policy import decide
    from mm_orchestration.console.run_requests import stamp_actor

    operator = Identity(OPERATOR, "operator", "proxy")

    def materialise(asset: str, partition: str) -> dict[str, Any]:
        params = launch_params("__ASSET_JOB", [{"key": "dagster/partition", "value": partition}])
        params["selector"]["assetSelection"] = [{"path": asset.split("/")}]
        return {"executionParams": params}

    residency = decide(
        "launchPipelineExecution", materialise("ops/residency_report", "2026-11-23"), operator, None
    )
    assert residency.refusal is None
    assert residency.target == "ops/residency_report"
    assert residency.details["assets"] == ["ops/residency_report"]
    assert residency.details["partitions"] == [{"dagster/partition": "2026-11-23"}]
    analytics = decide(
        "launchPipelineExecution",
        materialise("ops/analytics_hourly", "2026-11-28-10:00"),
        operator,
        None,
    )
    assert analytics.refusal == "operator may not launch ops/analytics_hourly"
    # Admins may; a backfill's runs carry the admin as their actor.
    backfill = {
        "backfillParams": {
            "partitionNames": ["2026-11-27"],
            "tags": [{"key": "mm/actor", "value": "x"}],
        }
    }
    admin = Identity(ADMIN, "admin", "proxy")
    assert decide("launchPartitionBackfill", backfill, admin, None).refusal is None
    stamp_actor("launchPartitionBackfill", backfill, ADMIN)
    assert backfill["backfillParams"]["tags"] == [{"key": "mm/actor", "value": ADMIN}]
    # Nobody may use a mutation the console has not classified.
    assert "not classified" in (decide("launchRocket", {}, admin, None).refusal or "")
    # DLQ tools are operators'; the restore drill is not.
    assert (
        decide(
            "launchRun", {"executionParams": launch_params("dlq_requeue")}, operator, None
        ).refusal
        is None
    )
    assert (
        decide(
            "launchRun", {"executionParams": launch_params("backup_verify")}, admin, None
        ).refusal
        is None
    )


def test_a_reexecution_is_judged_by_the_parent_runs_job_and_stamped():
    from types import SimpleNamespace

    from mm_orchestration.console.dagster_private import ContextLookups
    from mm_orchestration.console.policy import decide
    from mm_orchestration.console.run_requests import stamp_actor

    origin = SimpleNamespace(
        location_name="mm_orchestration",
        repository_origin=SimpleNamespace(repository_name="__repository__"),
    )
    runs = {
        name: SimpleNamespace(job_name=job, asset_selection=None, tags={}, remote_job_origin=origin)
        for name, job in (("drill", "backup_verify"), ("expiry", "share_link_expiry"))
    }
    lookups = ContextLookups(SimpleNamespace(instance=SimpleNamespace(get_run_by_id=runs.get)))
    operator = Identity(OPERATOR, "operator", "proxy")

    def again(parent: str) -> dict[str, Any]:
        return {"reexecutionParams": {"parentRunId": parent, "strategy": "ALL_STEPS"}}

    refused = decide("launchRunReexecution", again("drill"), operator, lookups)
    assert refused.refusal == "operator may not re-execute backup_verify"
    assert refused.details["parent_run_ids"] == ["drill"]
    args = again("expiry")
    allowed = decide("launchRunReexecution", args, operator, lookups)
    assert allowed.refusal is None and allowed.job_name == "share-link-expiry"
    stamp_actor("launchRunReexecution", args, OPERATOR)
    assert args["reexecutionParams"]["extraTags"] == [{"key": "mm/actor", "value": OPERATOR}]
    # A parent the instance does not know: nobody but an admin may guess what it ran.
    assert decide("launchRunReexecution", again("gone"), operator, lookups).refusal


def test_a_websocket_without_an_identity_is_refused(console):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{console.port}/graphql", subprotocols=["graphql-ws"])  # type: ignore[list-item]
    assert refused.value.response.status_code in (401, 403)


# -- every mutation's target, however its arguments are spelled ---------------------------


def _sample(type_: Any, name: str, depth: int = 0) -> Any:
    """A value of a GraphQL input type, every field filled (for naming what is acted on)."""
    from graphql import (
        GraphQLEnumType,
        GraphQLInputObjectType,
        GraphQLList,
        GraphQLNonNull,
    )

    if isinstance(type_, GraphQLNonNull):
        return _sample(type_.of_type, name, depth)
    if isinstance(type_, GraphQLList):
        return [_sample(type_.of_type, name, depth)]
    if isinstance(type_, GraphQLEnumType):
        return next(iter(type_.values))
    if isinstance(type_, GraphQLInputObjectType):
        if depth > 4:
            return None
        return {(f.out_name or n): _sample(f.type, n, depth + 1) for n, f in type_.fields.items()}
    return {"Int": 1, "Float": 1.0, "Boolean": True}.get(type_.name, f"{name}-x")


def test_every_mutation_names_its_target_however_dagster_spells_its_arguments():
    """graphql-core hands the gate Python names (`schedule_selector`), which differ from
    the schema's for some mutations: each must still be audited with what it acts on."""
    from mm_orchestration.console.dagster_private import graphql_schema
    from mm_orchestration.console.graphql_args import graphql_args
    from mm_orchestration.console.policy import decide

    admin = Identity(ADMIN, "admin", "proxy")
    fields = graphql_schema().mutation_type.fields
    unnamed = {}
    for field_name, definition in fields.items():
        if MUTATIONS[field_name].rule == "free":
            continue
        as_resolver_gets_them = {
            (a.out_name or n): _sample(a.type, n) for n, a in definition.args.items()
        }
        decision = decide(field_name, as_resolver_gets_them, admin, None)
        if not decision.target:
            unnamed[field_name] = sorted(as_resolver_gets_them)
        # The schema's spelling and the resolver's are one and the same to the gate.
        named = graphql_args(field_name, as_resolver_gets_them)
        assert decide(field_name, named, admin, None).target == decision.target
    assert unnamed == {}
    schedule = {"repositoryLocationName": "loc", "repositoryName": "r", "scheduleName": "s"}
    for field_name in ("startSchedule", "resetSchedule"):
        target = decide(field_name, {"schedule_selector": schedule}, admin, None).target
        assert target == "loc:s", field_name
    sensor = {"repositoryLocationName": "loc", "repositoryName": "r", "sensorName": "n"}
    for field_name in ("startSensor", "resetSensor", "setSensorCursor"):
        assert decide(field_name, {"sensor_selector": sensor}, admin, None).target == "loc:n"
    assert decide("sensorDryRun", {"selector_data": sensor}, admin, None).target == "loc:n"
    assert decide("scheduleDryRun", {"selector_data": schedule}, admin, None).target == "loc:s"


def test_the_arguments_the_gate_rewrites_are_spelled_alike_in_python_and_graphql():
    """stamp_actor and keep_resources_as_defined change the arguments Dagster's resolver
    gets (Python names): an upgrade that renames one of those in Python would let a launch
    through unstamped, so it fails here first."""
    from graphql import GraphQLInputObjectType, get_named_type

    from mm_orchestration.console.dagster_private import graphql_schema
    from mm_orchestration.console.mutations import LAUNCH_FIELDS

    fields = graphql_schema().mutation_type.fields
    rewritten = {
        *("executionParams", "executionParamsList", "reexecutionParams", "backfillParams"),
        *("executionMetadata", "tags", "extraTags", "runConfigData", "key", "value"),
    }
    renamed = []

    def walk(name: str, definition: Any, seen: set[str]) -> None:
        if name in rewritten and definition.out_name not in (None, name):
            renamed.append((name, definition.out_name))
        named = get_named_type(definition.type)
        if isinstance(named, GraphQLInputObjectType) and named.name not in seen:
            for inner, field in named.fields.items():
                walk(inner, field, seen | {named.name})

    for field_name in LAUNCH_FIELDS | {"launchPartitionBackfill", "reexecutePartitionBackfill"}:
        for name, argument in fields[field_name].args.items():
            walk(name, argument, set())
    assert renamed == []


def test_wipes_and_reported_events_name_their_assets_and_partitions():
    from mm_orchestration.console.policy import decide

    admin = Identity(ADMIN, "admin", "proxy")
    wipe = decide(
        "wipeAssets",
        {
            "assetPartitionRanges": [
                {
                    "assetKey": {"path": ["ops", "analytics_hourly"]},
                    "partitions": {"ranges": [{"start": "2026-11-01", "end": "2026-11-02"}]},
                },
                {"assetKey": {"path": ["ops", "job_health"]}},
            ]
        },
        admin,
        None,
    )
    assert wipe.target == "ops/analytics_hourly,ops/job_health"
    assert wipe.details["assets"] == ["ops/analytics_hourly", "ops/job_health"]
    assert wipe.details["partitions"] == [
        {"asset": "ops/analytics_hourly", "partitions": ["2026-11-01...2026-11-02"]},
        {"asset": "ops/job_health", "partitions": "all"},
    ]
    event = decide(
        "reportRunlessAssetEvents",
        {
            "eventParams": {
                "eventType": "MATERIALIZATION",
                "assetKey": {"path": ["ops", "tenant_health_daily"]},
                "partitionKeys": ["2026-11-28", "2026-11-29"],
            }
        },
        admin,
        None,
    )
    assert event.target == "ops/tenant_health_daily"
    assert event.details == {
        "assets": ["ops/tenant_health_daily"],
        "partitions": [
            {"asset": "ops/tenant_health_daily", "partitions": ["2026-11-28", "2026-11-29"]}
        ],
    }
    backfill = decide(
        "launchPartitionBackfill",
        {
            "backfillParams": {
                "assetSelection": [{"path": ["ops", "analytics_hourly"]}],
                "partitionNames": ["2026-11-28-10:00"],
            }
        },
        admin,
        None,
    )
    assert backfill.details["assets"] == ["ops/analytics_hourly"]
    assert backfill.details["partitions"] == [{"partitions": ["2026-11-28-10:00"]}]


LAUNCH_MANY = """
mutation($l: [ExecutionParams!]!) { launchMultipleRuns(executionParamsList: $l) {
  __typename ... on LaunchMultipleRunsResult { launchMultipleRunsResult {
    __typename ... on LaunchRunSuccess { run { runId } } } }
  ... on PythonError { message } } }
"""


def test_each_run_of_a_batch_launch_has_its_own_entry_with_its_run_id(console):
    """The reconciling sensor adds an entry for a manual run no entry names: a batch's
    runs each carry theirs, so none is audited twice."""
    from mm_orchestration.platform.audit import record_once_per_run

    batch = [launch_params("share_link_expiry"), launch_params("notification_digest")]
    answer = gql(console, OPERATOR, LAUNCH_MANY, {"l": batch})["data"]["launchMultipleRuns"]
    runs = [r["run"]["runId"] for r in answer["launchMultipleRunsResult"]]
    assert len(runs) == 2
    for run_id, job in zip(runs, ("share_link_expiry", "notification_digest"), strict=True):
        (entry,) = console.audit("run_id = %s", [run_id])
        assert (entry["actor"], entry["target"], entry["outcome"]) == (OPERATOR, job, "succeeded")
        assert entry["details"]["mutation"] == "launchMultipleRuns"
    with psycopg.connect(console.database_url, autocommit=True) as conn:
        for run_id in runs:
            assert not record_once_per_run(conn, "x", "manual_run", "x", run_id, {})
    # A batch with the drill in it is refused whole, each run's refusal audited.
    batch = [launch_params("share_link_expiry"), launch_params("backup_verify")]
    answer = gql(console, OPERATOR, LAUNCH_MANY, {"l": batch})["data"]["launchMultipleRuns"]
    assert answer == {
        "__typename": "PythonError",
        "message": "operator may not launch backup_verify",
    }
    refused = console.audit("details->>'mutation' = 'launchMultipleRuns' AND outcome = 'refused'")
    assert [(e["target"], e["details"]["refusal"]) for e in refused] == [
        ("share_link_expiry", "refused with its batch: operator may not launch backup_verify"),
        ("backup_verify", "operator may not launch backup_verify"),
    ]


def test_a_nul_in_the_variables_is_audited_not_lost(console):
    """PostgreSQL's text and jsonb refuse NUL: the entry escapes it, and the refusal is
    still audited (and still a refusal)."""
    params = launch_params("backup_verify", [{"key": "note\u0000", "value": "a\u0000b"}])
    answer = gql(console, OPERATOR, LAUNCH, {"p": params})["data"]["launchPipelineExecution"]
    assert answer["message"] == "operator may not launch backup_verify"
    (entry,) = console.audit("details::text LIKE %s", ["%a\\\\\\\\u0000b%"])
    assert (entry["actor"], entry["outcome"]) == (OPERATOR, "refused")
    tags = entry["details"]["variables"]["executionParams"]["executionMetadata"]["tags"]
    assert tags == [{"key": "note\\u0000", "value": "a\\u0000b"}]


@pytest.mark.parametrize(
    "host, bound",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("127.8.9.10", "127.8.9.10"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
        ("LOCALHOST.", "127.0.0.1"),
    ],
)
def test_local_mode_serves_on_any_spelling_of_a_loopback_address(host, bound):
    from mm_orchestration.console.serve import check_binding

    local = ConsoleAccess(mode="local", local_user="me")
    assert check_binding(host, local) == bound


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "::ffff:10.0.0.1", "example.com"])
def test_local_mode_refuses_anything_but_loopback(host):
    from mm_orchestration.console.serve import check_binding

    with pytest.raises(SettingsError, match="MM_CONSOLE_AUTH=local .*only on a loopback"):
        check_binding(host, ConsoleAccess(mode="local", local_user="me"))


@pytest.mark.parametrize(
    "host, url", [("127.1", "http://127.0.0.1:3000"), ("[::1]", "http://[::1]:3000")]
)
def test_the_local_stacks_take_any_loopback_spelling_for_their_links(monkeypatch, host, url):
    """`mm-jobs dev --host 127.1`: the report links the console shows are a URL the
    settings accept, and the stack binds the address itself."""
    import argparse

    from mm_orchestration.local.commands import _console_defaults

    for name in ("MM_CONSOLE_AUTH", "MM_REPORTS_URL", "MM_CONSOLE_ROLES", "MM_CONSOLE_ROLES_FILE"):
        monkeypatch.delenv(name, raising=False)
    args = argparse.Namespace(host=host, port=3000)
    env = _console_defaults(args, dict(os.environ))
    assert env["MM_REPORTS_URL"] == url
    assert "MM_REPORTS_URL" not in os.environ  # the stack's children get it, not this process
    assert Settings.from_env(env).reports_url.rstrip("/") == url
    assert args.host in ("127.0.0.1", "::1")


def test_requests_the_gate_cannot_read_are_refused_and_audited_never_a_500(console):
    """A run config YAML cannot build (a timestamp in month 13) and a parent run id with
    a NUL make reading them raise: a clear GraphQL answer and a `refused` entry, no stack
    trace. `mutation { __typename }` changes nothing and answers."""
    params = launch_params("share_link_expiry")
    params["runConfigData"] = "ops:\n  x:\n    config:\n      note: !!timestamp 2026-13-45\n"
    status, body, _ = curl(console.port, "/graphql", OPERATOR,
                           {"query": LAUNCH, "variables": {"p": params}})  # fmt: skip
    assert status == 200, body[:500]
    answer = json.loads(body)["data"]["launchPipelineExecution"]
    assert answer["__typename"] == "PythonError"
    assert "the run config could not be read (ValueError" in answer["message"]
    reexecute = """mutation($p: ReexecutionParams!) { launchRunReexecution(reexecutionParams: $p) {
      __typename ... on PythonError { message } } }"""
    status, body, _ = curl(
        console.port,
        "/graphql",
        OPERATOR,
        {
            "query": reexecute,
            "variables": {"p": {"parentRunId": "a\u0000b", "strategy": "ALL_STEPS"}},
        },
    )
    assert status == 200, body[:500]
    answer = json.loads(body)["data"]["launchRunReexecution"]
    assert "could not be judged" in answer["message"] and "Traceback" not in body.decode()
    refused = console.audit(
        "outcome = 'refused' AND (details->>'refusal' LIKE %s OR details->>'refusal' LIKE %s)",
        ["the run config could not be read%", "the request could not be judged%"],
    )
    assert {e["action"] for e in refused} == {"launch_run", "reexecute_run"}
    assert all(e["actor"] == OPERATOR for e in refused)
    status, body, _ = curl(console.port, "/graphql", VIEWER, {"query": "mutation { __typename }"})
    assert status == 200 and json.loads(body)["data"] == {"__typename": "Mutation"}


def test_evidence_bundles_go_to_compliance_and_admins_only_audited(console):
    """A bundle `mm-jobs evidence export` kept is downloaded from the console by compliance
    (and admins), byte for byte as signed; a viewer or operator is refused; all audited.
    The audit trail's download names the chain's head at its period's end."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mm_orchestration.features.evidence.bundle import Period, export
    from mm_orchestration.features.evidence.check import verify
    from mm_orchestration.features.evidence.store import keep

    store = ReportStore.from_settings(Settings.from_env({"MM_DATA_DIR": str(console.data_dir)}))
    key = Ed25519PrivateKey.generate()
    with psycopg.connect(console.database_url, autocommit=True) as conn:
        made = export(conn, store, Period.parse("2026-Q4"), key, COMPLIANCE)
        keep(conn, store, made, COMPLIANCE, "tests")
    status, body, headers = curl(console.port, "/evidence/2026-q4", COMPLIANCE)
    assert status == 200 and body == made.data and verify(body, key.public_key()).ok
    assert "application/zip" in headers and made.file_name.lower() in headers
    assert curl(console.port, "/evidence/2026-Q4", ADMIN)[0] == 200
    for person in (VIEWER, OPERATOR):
        status, body, _ = curl(console.port, "/evidence/2026-Q4", person)
        assert status == 403 and b"compliance and admin only" in body
    assert curl(console.port, "/evidence/2026-Q3", COMPLIANCE)[0] == 404
    assert curl(console.port, "/evidence/2026-Q9", COMPLIANCE)[0] == 400
    downloads = console.audit("action = 'download_evidence'")
    assert [(e["actor"], e["role"], e["outcome"]) for e in downloads] == [
        (COMPLIANCE, "compliance", "succeeded"),
        (ADMIN, "admin", "succeeded"),
        (VIEWER, "viewer", "refused"),
        (OPERATOR, "operator", "refused"),
        (COMPLIANCE, "compliance", "failed"),
    ]
    assert downloads[0]["details"]["sha256"] == made.sha256
    assert {e["target"] for e in downloads} == {"evidence 2026-Q4", "evidence 2026-Q3"}
    status, _, headers = curl(console.port, "/audit-trail.csv", COMPLIANCE)
    assert status == 200 and "x-audit-chain-head: " in headers
