"""The console front: dagster-webserver's own ASGI app, behind a layer of ours.

- `IdentityFront` (ASGI, outermost): every request gets a person (access.ConsoleAccess) or
  a 401 page; a person without a role gets a 403 page. Only `/server_info` (versions, for
  health checks such as the Helm chart's probes) answers without one.
- `ConsoleWebserver` (a `DagsterWebserver`): each request's Dagster context carries the
  person's role as Dagster permissions, so the UI enables only what the role allows and
  Dagster's own checks refuse the rest; the graphene middleware (gate.ConsoleGate) audits
  and judges every mutation; Dagster's REST endpoints that change state (reporting asset
  events) are judged and audited the same way; GraphQL over the websocket carries only
  subscriptions; reports and the audit trail download here, as the signed-in person.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from dagster._core.workspace.context import WorkspaceRequestContext
from dagster._core.workspace.permissions import (
    LOCATION_SCOPED_PERMISSIONS,
    PermissionResult,
    Permissions,
)
from dagster_webserver.webserver import DagsterWebserver
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    parse,
)
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from mm_orchestration.console.access import ConsoleAccess, Identity, origin_of
from mm_orchestration.console.downloads import lookup, report_of
from mm_orchestration.console.gate import (
    IDENTITY_SCOPE_KEY,
    AuditUnavailable,
    ConsoleAudit,
    ConsoleGate,
    ConsoleRefusal,
    ended_by,
)
from mm_orchestration.features.audit_trail import query as audit_trail
from mm_orchestration.platform import audit
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE

log = logging.getLogger("mm.console")

PUBLIC_PATHS = frozenset({"/server_info"})
# What an operator may do besides reading (per-job rules are the gate's).
OPERATOR_PERMISSIONS = frozenset(
    {
        Permissions.LAUNCH_PIPELINE_EXECUTION,
        Permissions.LAUNCH_PIPELINE_REEXECUTION,
        Permissions.RELOAD_REPOSITORY_LOCATION,
        Permissions.RELOAD_WORKSPACE,
    }
)


def role_permissions(role: str | None) -> dict[str, PermissionResult]:
    """Dagster's permission map for a role: what the UI enables and Dagster allows."""
    result = {}
    for permission in Permissions:
        enabled = role == "admin" or (role == "operator" and permission in OPERATOR_PERMISSIONS)
        reason = None if enabled else f"Your role ({role or 'none'}) does not allow this."
        result[permission.value] = PermissionResult(enabled=enabled, disabled_reason=reason)
    return result


class RoleRequestContext(WorkspaceRequestContext):
    """Dagster's request context with the permissions of the person's role."""

    def __init__(self, role: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._role = role

    @property
    def permissions(self) -> Mapping[str, PermissionResult]:
        return role_permissions(self._role)

    def permissions_for_location(self, *, location_name: str) -> Mapping[str, PermissionResult]:
        return {
            k: v
            for k, v in role_permissions(self._role).items()
            if k in LOCATION_SCOPED_PERMISSIONS
        }


def identity_of(conn: HTTPConnection) -> Identity | None:
    return conn.scope.get(IDENTITY_SCOPE_KEY)


class ConsoleWebserver(DagsterWebserver):
    """dagster-webserver with our identity, roles, audit and downloads (module docstring)."""

    def __init__(
        self,
        process_context: Any,
        audit_log: ConsoleAudit,
        store: ReportStore | None,
        timezone: str = BUSINESS_TIMEZONE,
        **kwargs: Any,
    ) -> None:
        self._audit_log = audit_log
        self._store = store
        self._timezone = timezone
        super().__init__(process_context, **kwargs)

    # -- Dagster's extension points ------------------------------------------------

    def build_graphql_middleware(self) -> list[Any]:
        return [ConsoleGate(self._audit_log)]

    def _make_request_context(self, conn: HTTPConnection) -> Any:
        identity = identity_of(conn)
        role = identity.role if identity else None
        pc = self._process_context
        return RoleRequestContext(
            role,
            instance=pc.instance,
            current_workspace=pc.get_current_workspace(),
            process_context=pc,
            version=pc.version,
            source=conn,
            read_only=role not in ("operator", "admin"),
        )

    def build_routes(self) -> list[BaseRoute]:
        """Dagster's routes with ours before its catch-all page; under a path prefix,
        inside the prefix as Dagster's are (`/jobs/audit-trail.csv`), or the UI's page
        would answer for them."""
        ours: list[BaseRoute] = [
            Route("/reports/{key:path}", self.report_download_endpoint),
            Route("/audit-trail.csv", self.audit_trail_endpoint),
            Route("/whoami", self.whoami_endpoint),
        ]
        routes = list(super().build_routes())
        if not self._app_path_prefix:
            return ours + routes
        mounted = [r for r in routes if isinstance(r, Mount) and r.path == self._app_path_prefix]
        assert len(mounted) == 1, "Dagster mounts its routes under the path prefix"
        inside = Mount(self._app_path_prefix, routes=ours + list(mounted[0].routes))
        return [inside if r is mounted[0] else r for r in routes]

    # -- state-changing REST endpoints: judged and audited like mutations ---------------

    async def _report_event(
        self, request: Request, kind: str, downstream: Callable[[Request], Awaitable[JSONResponse]]
    ) -> JSONResponse:
        """Dagster's REST reporting of an asset event, judged (admins only) and audited
        like a mutation: the entry names the asset and partition wherever the request
        gives them (path, body or query, read as Dagster reads them), and ends with what
        Dagster answered."""
        identity = identity_of(request)
        try:
            body = await _json_body(request)
        except BadBody as exc:
            if request.headers.get("content-type") == "application/json":
                return JSONResponse({"error": str(exc)}, status_code=400)
            body = {}  # Dagster reads the body only as JSON, and refuses other types itself
        asset, partition, check = _reported(request, body)
        allowed = identity is not None and identity.at_least("admin")
        who = identity.role if identity else "nobody"
        what = asset or "an asset it does not name"
        refusal = None if allowed else f"{who} may not {kind.replace('_', ' ')} {what}"
        try:
            entry = await _in_thread(
                self._audit_log.write,
                identity,
                kind,
                "allowed" if allowed else "refused",
                asset,
                {
                    "assets": [asset] if asset else [],
                    "partitions": [partition] if partition else [],
                    **({"check": check} if check else {}),
                    "variables": audit.masked({"query": dict(request.query_params), "body": body}),
                    "via": f"rest {request.method}",
                    **({"refusal": refusal} if refusal else {}),
                },
            )
        except AuditUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        if refusal:
            return JSONResponse({"error": refusal}, status_code=403)
        return await self._answered(entry, downstream, request)

    async def _answered(
        self,
        entry: int,
        downstream: Callable[[Request], Awaitable[JSONResponse]],
        request: Request,
    ) -> JSONResponse:
        """Pass an allowed REST action on, and settle its entry with the real answer (a
        400 from Dagster is a failure, whatever we allowed)."""
        try:
            response = await downstream(request)
        except BaseException as exc:
            self._audit_log.settle(entry, *ended_by(exc))  # not in a thread: we may be cancelled
            raise
        status = response.status_code
        result: dict[str, Any] = {"status": status}
        if status >= 400:
            result["answer"] = bytes(response.body).decode("utf-8", "replace")
        outcome = "succeeded" if status < 400 else "failed"
        await _in_thread(self._audit_log.settle, entry, outcome, None, result)
        return response

    async def report_asset_materialization_endpoint(self, request: Request) -> JSONResponse:
        return await self._report_event(
            request, "report_asset_materialization", super().report_asset_materialization_endpoint
        )

    async def report_asset_check_endpoint(self, request: Request) -> JSONResponse:
        return await self._report_event(
            request, "report_asset_check", super().report_asset_check_endpoint
        )

    async def report_asset_observation_endpoint(self, request: Request) -> JSONResponse:
        return await self._report_event(
            request, "report_asset_observation", super().report_asset_observation_endpoint
        )

    # -- GraphQL over HTTP: one operation per request ----------------------------------

    def handle_graphql_errors(self, errors: Any) -> list[Any]:
        """Dagster's error list, but the gate's refusals carry their message alone: a
        refusal is no server fault, and its trace would show the gate's code."""
        refusals = [e for e in errors if isinstance(e.original_error, ConsoleRefusal)]
        others = [e for e in errors if not isinstance(e.original_error, ConsoleRefusal)]
        formatted = list(super().handle_graphql_errors(others)) if others else []
        return [e.formatted for e in refusals] + formatted

    def _determine_status_code(self, resolver_errors: Any, captured_errors: Any) -> int:
        """A refusal is the client's error (400), not the server's (500)."""
        if resolver_errors:
            resolver_errors = [
                GraphQLError(e.message) if isinstance(e.original_error, ConsoleRefusal) else e
                for e in resolver_errors
            ]
        return int(super()._determine_status_code(resolver_errors, captured_errors))

    async def graphql_http_endpoint(self, request: Request) -> Response:
        """Dagster's endpoint, but a request that is not one query or mutation, however it
        comes (a JSON body, application/graphql, a query string), is refused with a 400
        saying so, and audited: a batch or JSON array; a query that is not text; variables
        that are not an object, as JSON or as a JSON string; JSON nested deeper than it
        can be read; a document that is not UTF-8; a subscription (the websocket's). The
        gate judges and audits each mutation of one operation, and Dagster itself would
        answer those with a 500. GraphiQL's page carries the badge naming the person, as
        the console's pages do."""
        html_page = request.method == "GET" and "text/html" in request.headers.get("Accept", "")
        if not html_page:
            problem = await _graphql_request_problem(request)
            if problem:
                unwritten = await _in_thread(
                    self._audit_log.refuse,
                    identity_of(request),
                    "graphql_request",
                    None,
                    {"via": f"graphql {request.method}", "refusal": problem},
                )
                if unwritten:
                    problem = str(unwritten)
                status = unwritten.status if unwritten else 400
                return JSONResponse({"errors": [{"message": problem}]}, status_code=status)
        response = await super().graphql_http_endpoint(request)
        if request.method == "GET" and isinstance(response, HTMLResponse):
            return self._with_badge(request, response)
        return response

    async def graphql_ws_endpoint(self, websocket: WebSocket) -> None:
        """Dagster's websocket, reading only messages of the protocol (graphql-ws): a
        message that is not one (not a JSON object, an id that is not text or a number, a
        start without a query as text and variables as an object) closes the socket with
        4400 saying why, where Dagster's loop would fail with a server error."""
        receive_json = websocket.receive_json

        async def checked(mode: str = "text") -> Any:
            try:
                message = await receive_json(mode)
            except (ValueError, KeyError, RecursionError):  # not JSON, or a binary frame
                message = None
            problem = _ws_message_problem(message)
            if problem:
                await websocket.close(code=4400, reason=problem)
                raise WebSocketDisconnect(4400, problem)
            return message

        websocket.receive_json = checked  # type: ignore[method-assign]
        await super().graphql_ws_endpoint(websocket)

    async def download_captured_logs_endpoint(self, request: Request) -> Response:
        """Dagster's download of a step's captured output, for log keys as Dagster writes
        them (`<run id>/compute_logs/<step>.<out|err>`-like segments of letters, digits,
        `_`, `-`, `.`); anything else is no log of ours (404), never a 500 or a path
        outside the logs folder."""
        segments = request.path_params.get("path", "").split("/")
        if len(segments) < 2 or not all(_LOG_SEGMENT.fullmatch(s) for s in segments):
            return PlainTextResponse("no such log", status_code=404)
        try:
            return await super().download_captured_logs_endpoint(request)
        except (OSError, ValueError):
            return PlainTextResponse("no such log", status_code=404)

    async def download_debug_file_endpoint(self, request: Request) -> Response:
        """Dagster's debug file of a run (what `dagster debug import` reads); a run id
        that names no run is a 404, not a 500."""
        run_id = request.path_params.get("run_id", "")
        if not _RUN_ID.fullmatch(run_id):
            return PlainTextResponse("no such run", status_code=404)
        with self.request_context(request) as context:
            if context.instance.get_run_by_id(run_id) is None:
                return PlainTextResponse("no such run", status_code=404)
        return await super().download_debug_file_endpoint(request)

    # -- the websocket carries subscriptions only ------------------------------------

    async def execute_graphql_subscription(
        self,
        websocket: WebSocket,
        operation_id: str,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> Any:
        try:
            document = parse(query)
        except GraphQLError as error:
            return None, error.formatted
        kinds = {d.operation for d in document.definitions if hasattr(d, "operation")}
        reads = _code_reads(document, self._graphene_schema.graphql_schema)
        message = None
        if kinds - {OperationType.SUBSCRIPTION}:
            message = "only subscriptions are accepted over the websocket; POST mutations"
        elif reads:
            # Dagster runs subscriptions without the gate (graphql-core's subscribe takes no
            # middleware), so a selection that runs code is refused here, whole.
            message = (
                f"a subscription may not select fields that run code ({', '.join(reads)}); "
                "ask for them in a query, where they are judged and audited"
            )
        if message:
            self._audit_log.refuse(
                identity_of(websocket),
                "websocket_operation",
                None,
                {
                    "query": query[:4000],
                    "variables": audit.masked(variables or {}),
                    "via": "graphql websocket",
                    "refusal": message,
                },
            )
            return None, {"message": message}
        return await super().execute_graphql_subscription(
            websocket, operation_id, query, variables, operation_name
        )

    # -- the person on every page -------------------------------------------------------

    def index_html_endpoint(self, request: Request) -> Response:
        response = super().index_html_endpoint(request)
        if not isinstance(response, HTMLResponse):
            return response
        return self._with_badge(request, response)

    def _with_badge(self, request: Request, response: HTMLResponse) -> Response:
        """The page with a badge naming who the console acts for (development: the local
        OS user, in yellow)."""
        identity = identity_of(request)
        if identity is None:
            return response
        page = bytes(response.body).decode()
        badge = (
            '<div id="mm-identity" title="Who the job console acts for" style="position:fixed;'
            "bottom:6px;left:50%;transform:translateX(-50%);z-index:2147483647;"
            "pointer-events:none;padding:2px 8px;"
            "border-radius:4px;font:12px system-ui,sans-serif;opacity:.85;"
            + (
                "background:#fde68a;color:#78350f"
                if identity.source == "local"
                else "background:#e5e7eb;color:#111827"
            )
            + f'">Signed in as {html.escape(identity.label)}</div>'
        )
        page = page.replace("</body>", badge + "</body>", 1)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return HTMLResponse(page, status_code=response.status_code, headers=headers)

    async def whoami_endpoint(self, request: Request) -> JSONResponse:
        identity = identity_of(request)
        assert identity is not None  # the front lets no one through without
        return JSONResponse(
            {"person": identity.person, "role": identity.role, "source": identity.source}
        )

    # -- downloads, as the signed-in person ---------------------------------------

    async def report_download_endpoint(self, request: Request) -> Response:
        """A stored report (viewer and above), each download audited."""
        identity = identity_of(request)
        key = request.path_params["key"]
        if self._store is None:
            return PlainTextResponse("reports are not configured here", status_code=404)
        database_url = self._audit_log.database_url
        found = await _in_thread(lookup, self._store, database_url, key)
        report = await _in_thread(report_of, self._store, database_url, key)
        # Named as compliance names it (the residency report of a week, CSV or HTML); the
        # object key stays in the details.
        target = (
            f"{report['report']} report {report['partition']} ({report['format']})"
            if report
            else key
        )
        try:
            await _in_thread(
                self._audit_log.write,
                identity,
                "download_report",
                "succeeded" if found.status == 200 else "failed",
                target,
                {
                    "via": "rest GET",
                    "object_key": key,
                    "status": found.status,
                    **(
                        {"reports": [report["report"]], "partitions": [report["partition"]]}
                        if report
                        else {}
                    ),
                    **({} if found.status == 200 else {"reason": found.body.decode()}),
                },
            )
        except AuditUnavailable as exc:
            return PlainTextResponse(str(exc), status_code=503)
        if found.status != 200:
            return PlainTextResponse(found.body.decode(), status_code=found.status)
        return Response(found.body, headers=found.headers())

    async def audit_trail_endpoint(self, request: Request) -> Response:
        """The audit trail as CSV, filtered by person, action and day or period (viewer and
        above; the download itself is audited)."""
        params = request.query_params
        try:
            wanted = _trail_filter(params, self._timezone)
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        identity = identity_of(request)
        try:
            entry = await _in_thread(
                self._audit_log.write,
                identity,
                "download_audit_trail",
                "allowed",
                "ops/audit_trail",
                {
                    "via": "rest GET",
                    "filter": {
                        "since": wanted.since.isoformat(),
                        "until": wanted.until.isoformat(),
                        "person": wanted.person,
                        "action": wanted.action,
                    },
                },
            )
        except AuditUnavailable as exc:
            return PlainTextResponse(str(exc), status_code=503)

        def read() -> audit_trail.Entries:
            with connect(self._audit_log.database_url) as conn:
                return audit_trail.read(conn, wanted)

        try:
            found = await _in_thread(read)
            body = audit_trail.as_csv(found.frame, found.note)
        except BaseException as exc:
            self._audit_log.settle(entry, *ended_by(exc))  # not in a thread: we may be cancelled
            raise
        result = {"status": 200, "rows": len(found.frame), "truncated": found.truncated}
        await _in_thread(self._audit_log.settle, entry, "succeeded", None, result)
        name = f"audit-trail-{wanted.since.date()}-{wanted.until.date()}.csv"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if found.truncated:
            # A cut download says so where a script looks, and in its last row.
            headers["X-Audit-Trail-Truncated"] = f"first {len(found.frame)} entries; narrow it"
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)


_NAME = re.compile(r"^[A-Za-z0-9._%+\-@:*]{1,254}$")
_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LOG_SEGMENT = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-.]{0,254}$")


def _trail_filter(params: Mapping[str, str], zone: str) -> audit_trail.Filter:
    """`day=YYYY-MM-DD` (a local day), or `since`/`until` (dates or ISO times); `person`,
    `action` optional. Default: today."""
    person = params.get("person") or None
    action = params.get("action") or None
    for name, value in (("person", person), ("action", action)):
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"{name}: not a person or an action name")
    try:
        if params.get("since") or params.get("until"):
            since = _when(params.get("since") or "1970-01-01", zone)
            until = _when(params.get("until") or "9999-01-01", zone)
            wanted = audit_trail.Filter(since, until, person, action)
        else:
            today = datetime.now(ZoneInfo(zone)).date()
            day = date.fromisoformat(params["day"]) if params.get("day") else today
            wanted = audit_trail.Filter.for_day(day, zone, person, action)
        # Both ends as UTC: a day or time at the calendar's edge overflows here, not later.
        wanted.since.astimezone(UTC), wanted.until.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            "day, since and until are dates (2026-11-30) or ISO times (2026-11-30T09:00+11:00) "
            "between the years 1 and 9998"
        ) from None
    if wanted.since >= wanted.until:
        raise ValueError("since must be before until")
    return wanted


def _when(text: str, zone: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(zone))


async def _graphql_request_problem(request: Request) -> str | None:
    """Why a request to /graphql is not one query or mutation as Dagster's endpoint reads
    it (a POST's JSON body, a POST of application/graphql, else the query string), or
    None: Dagster's own handler would answer these with a 500."""
    content_type = request.headers.get("content-type", "")
    data: Any
    if request.method == "POST" and "application/json" in content_type:
        try:
            data = await _json_body(request)
        except BadBody as exc:
            return str(exc)
    elif request.method == "POST" and "application/graphql" in content_type:
        try:
            data = {"query": (await request.body()).decode("utf-8")}
        except UnicodeDecodeError:
            return "the GraphQL document is not UTF-8 text"
    else:
        data = {k: request.query_params.get(k) for k in ("query", "variables", "operationName")}
    return _graphql_body_problem(data)


def _graphql_body_problem(body: Any) -> str | None:
    """Why `body` (a JSON body, or the query string's fields) is not one GraphQL query or
    mutation, or None (a request without a query or with a query that does not parse is
    Dagster's to answer, with its own 400)."""
    if not isinstance(body, dict):
        return (
            "send one GraphQL operation per request: a JSON object with query and variables "
            "(batches, JSON arrays, are not accepted)"
        )
    query, variables, name = body.get("query"), body.get("variables"), body.get("operationName")
    if not isinstance(query, str | None):
        return "query must be the GraphQL document as text"
    if isinstance(variables, str):
        try:
            variables = json.loads(variables)
        except RecursionError:
            return "the variables are nested too deeply to be read"
        except ValueError:
            return None  # Dagster answers malformed variables with a 400 of its own
    if not isinstance(variables, dict | None):
        return "variables must be a JSON object (or that object as a JSON string)"
    if not isinstance(name, str | None):
        return "operationName must be text"
    if query is not None and _operation_kind(query, name) == OperationType.SUBSCRIPTION:
        return "subscriptions are served over the websocket (/graphql), not over HTTP"
    return None


def _operation_kind(query: str, name: str | None) -> OperationType | None:
    """The kind of the operation `query` runs (with operationName `name`), or None when it
    does not parse or names none (Dagster answers that)."""
    try:
        document = parse(query)
    except (GraphQLError, RecursionError):
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = [o for o in operations if name is None or (o.name and o.name.value == name)]
    return chosen[0].operation if len(chosen) == 1 else None


def _code_reads(document: DocumentNode, schema: GraphQLSchema) -> list[str]:
    """The fields of `document` that run code on the code server (mutations.CODE_READS),
    as `Type.field`, wherever the selection reaches them (fragments included)."""
    from graphql import TypeInfo, TypeInfoVisitor, Visitor, visit

    from mm_orchestration.console.mutations import CODE_READS

    found: set[str] = set()
    info = TypeInfo(schema)

    class Fields(Visitor):
        def enter_field(self, node: Any, *_: Any) -> None:
            parent = info.get_parent_type()
            if parent is not None and (parent.name, node.name.value) in CODE_READS:
                found.add(f"{parent.name}.{node.name.value}")

    visit(document, TypeInfoVisitor(info, Fields()))
    return sorted(found)


def _ws_message_problem(message: Any) -> str | None:
    """Why a websocket message is not one of the graphql-ws protocol (None: it is)."""
    if not isinstance(message, dict):
        return "a message is a JSON object (graphql-ws)"
    if not isinstance(message.get("type"), str):
        return "a message's type is text"
    if not isinstance(message.get("id"), str | int | None) or isinstance(message.get("id"), bool):
        return "a message's id is text or a number"
    if message["type"] != "start":
        return None
    payload = message.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return "a start message's payload holds the query as text"
    if not isinstance(payload.get("variables"), dict | None):
        return "a start message's variables are a JSON object"
    if not isinstance(payload.get("operation_name"), str | None):
        return "a start message's operation_name is text"
    return None


class BadBody(ValueError):
    """A request body that claims JSON but cannot be read as JSON."""


async def _json_body(request: Request) -> Any:
    """The request's JSON body ({} when empty); BadBody when it is not JSON, or nested
    deeper than Python reads (Dagster's own handlers would answer that with a 500)."""
    body = await request.body()
    if not body:
        return {}
    try:
        return json.loads(body)
    except RecursionError:
        raise BadBody("the JSON body is nested too deeply to be read") from None
    except ValueError:
        raise BadBody("the body is not JSON") from None


def _reported(request: Request, body: Any) -> tuple[str | None, str | None, str | None]:
    """(asset, partition, check) of a REST asset report, read as Dagster reads them: the
    path, else the body's `asset_key`, else the query's; the others body before query."""
    from dagster_webserver.external_assets import (
        _asset_key_from_request,
        _value_from_body_or_params,
    )

    fields = body if isinstance(body, dict) else {}
    try:
        key = _asset_key_from_request("asset_key", request, fields)
    except Exception:  # a malformed key: Dagster refuses it; the request is still audited
        key = None
    asset = key.to_user_string() if key is not None else None
    if asset is None and fields.get("asset_key") is not None:
        asset = str(fields["asset_key"])
    partition = _value_from_body_or_params("partition", request, fields)
    check = _value_from_body_or_params("check_name", request, fields)
    return (
        asset,
        str(partition) if partition is not None else None,
        str(check) if check is not None else None,
    )


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


# -- the identity layer -----------------------------------------------------------

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{title} - mm-orchestration job console</title></head>
<body style="font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;line-height:1.5">
<h1>{title}</h1><p>{message}</p>
<p style="color:#555">mm-orchestration job console. Sign-in is handled by the company's
identity proxy; this console stores no passwords.</p></body></html>
"""


def _local_host_problem(scope: Scope, headers: dict[str, str]) -> str | None:
    """Why a request may not reach the development console (None: it may). Its identity is
    whoever runs it, so only the loopback names may address it: a page of another site
    that points its own name at 127.0.0.1 (DNS rebinding) is same-origin to the browser,
    Origin and all, and only the Host it sends gives it away."""
    from mm_orchestration.console.serve import loopback_address

    host = headers.get("host", "")
    parts = urlsplit(f"//{host}")
    try:
        name, port = parts.hostname or "", parts.port
    except ValueError:  # a port that is not one
        name, port = "", None
    server = scope.get("server")
    expected = server[1] if server and len(server) > 1 else None
    if port is None:
        port = 443 if scope.get("scheme") in ("https", "wss") else 80
    if not host or "@" in host or loopback_address(name) is None:
        return (
            f"the development console answers only to its loopback address (localhost, "
            f"127.0.0.1 or [::1]), not to {html.escape(host[:100]) or 'no Host'}: open it as "
            f"http://localhost:{expected or 'PORT'}/"
        )
    if expected is not None and port != expected:
        return (
            f"the development console listens on port {expected}, not {port}: open it as "
            f"http://localhost:{expected}/"
        )
    return None


def _cross_site(scope: Scope, headers: dict[str, str], access: ConsoleAccess) -> bool:
    """A request that changes or may change something (anything but GET, HEAD, OPTIONS; a
    websocket) sent by another site's page: browsers name the page's origin in `Origin`
    on every such request, `no-cors` fetches and form posts included. A request without
    Origin is no browser's cross-site request (curl, the proxy's health checks).

    Behind the proxy the page's origin must be the console's public address, as a full
    origin (scheme, host, port): what the proxy forwards as Host (its upstream's address,
    the browser's host without its port, ...) says nothing about where the page was. In
    development, where the Host has been checked to be a loopback name on our port, the
    origin must be that same host."""
    if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD", "OPTIONS"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return False
    if access.public_origin is not None:
        return origin_of(origin) != access.public_origin or origin.strip().count("/") != 2
    host = headers.get("host") or ""
    return urlsplit(origin).netloc.lower() != host.strip().lower()


# What every answer carries (a security review's list): no framing by another site (the
# page could be laid under a decoy to take an admin's clicks; Dagster dropped its own on
# purpose, dagster#9332), no MIME sniffing, no full URL leaked in Referer.
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
# Added to the policy Dagster gives its UI (scripts by nonce, inline styles), or the whole
# policy of anything else: pages of ours, GraphiQL's, downloads.
_CSP_ADDITIONS = ("frame-ancestors 'none'", "form-action 'self'")
_CSP_DEFAULT = "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` (an ASGI response's) with SECURITY_HEADERS set and the content security
    policy refusing framing; a policy already there (Dagster's, with its nonce) is kept
    and extended."""
    kept = [(k, v) for k, v in headers if k.lower().decode("latin-1") not in SECURITY_HEADERS]
    kept += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
    csp = [i for i, (k, _) in enumerate(kept) if k.lower() == b"content-security-policy"]
    if not csp:
        return [*kept, (b"content-security-policy", _CSP_DEFAULT.encode())]
    for i in csp:
        name, value = kept[i]
        policy = value.decode("latin-1").strip().rstrip(";")
        missing = [d for d in _CSP_ADDITIONS if d.split()[0] not in policy]
        kept[i] = (name, "; ".join([policy, *missing]).encode("latin-1"))
    return kept


def _public_locations(
    headers: list[tuple[bytes, bytes]], scope: Scope, public_origin: str
) -> list[tuple[bytes, bytes]]:
    """`headers` with a redirect to the console itself at its public address. Starlette
    builds an absolute `Location` from what reached it (`/jobs` -> `http://<Host>/jobs/`):
    the proxy's scheme to us (http behind TLS), and whatever it forwards as Host (our
    127.0.0.1:3000, or a rewritten name); the browser must be sent where it opened us."""
    own = {v.decode("latin-1").strip().lower() for k, v in scope.get("headers", []) if k == b"host"}
    server = scope.get("server")
    if server and len(server) > 1:
        host = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
        own |= {f"{host}:{server[1]}".lower(), host.lower()}
    out = []
    for name, value in headers:
        if name.lower() == b"location":
            parts = urlsplit(value.decode("latin-1"))
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc.lower() in own:
                rest = parts.path + (f"?{parts.query}" if parts.query else "")
                value = (public_origin + rest).encode("latin-1")
        out.append((name, value))
    return out


def _path_problem(path: str) -> str | None:
    """Why a request path is no path of the console's (None: it may be): dot segments
    (`/logs/../..`, which a proxy or a client should have resolved), NUL or backslashes.
    Dagster's handlers would answer those with a 500, or read outside what they serve."""
    segments = path.split("/")
    if any(s in (".", "..") for s in segments) or "\x00" in path or "\\" in path:
        return "the path has dot segments, a backslash or a NUL character"
    return None


# Dagster's notebook viewer reads any `.ipynb` file the code server can reach by a path the
# request names; this project has no notebooks.
_NO_SUCH_PATHS = ("/notebook", "/dagit/notebook")


class IdentityFront:
    """ASGI: a person for every request (or 401/403), put in the scope for the app; every
    refusal audited (within each person's budget); security headers on every answer."""

    def __init__(self, app: ASGIApp, access: ConsoleAccess, audit_log: ConsoleAudit | None = None):
        self.app = app
        self.access = access
        self.audit_log = audit_log
        prefix = access.path_prefix
        self.public_paths = frozenset(prefix + p for p in PUBLIC_PATHS)
        self.missing_paths = frozenset(prefix + p for p in _NO_SUCH_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = with_security_headers(message.get("headers", []))
                origin = self.access.public_origin
                if origin is not None:
                    headers = _public_locations(headers, scope, origin)
                message = {**message, "headers": headers}
            await send(message)

        await self._serve(scope, receive, send_secured)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = self._under_prefix(scope)
        path = scope.get("path", "")
        if scope["type"] == "http" and path in self.public_paths:
            await self.app(scope, receive, send)
            return
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = dict(raw)
        client = scope.get("client")
        peer = client[0] if client else None
        if self.access.mode == "local":
            problem = _local_host_problem(scope, headers)
            if problem:
                await self._refuse(
                    scope, receive, send, None, peer, 421, "Refused: not this console", problem
                )
                return
        identity = self.access.identify(peer, raw)
        if identity is None:
            await self._refuse(
                scope,
                receive,
                send,
                None,
                peer,
                401,
                "Sign-in required",
                "This request carries no identity the console can believe. Open the console "
                "through the company's sign-in (the identity proxy); a request straight to the "
                "console, or one whose identity header did not come from the proxy, is refused.",
            )
            return
        if _cross_site(scope, headers, self.access):
            await self._refuse(
                scope,
                receive,
                send,
                identity,
                peer,
                403,
                "Refused: another site",
                "This request came from a page of another site (its Origin is not this "
                "console's address). The console acts only on requests from its own pages.",
            )
            return
        if identity.role is None:
            await self._refuse(
                scope,
                receive,
                send,
                identity,
                peer,
                403,
                "No access",
                f"You are signed in as {html.escape(identity.person)}, but you have no role in "
                "the job console. Ask an admin to add you (viewer, operator or admin) to "
                "MM_CONSOLE_ROLES or MM_CONSOLE_ROLES_FILE.",
            )
            return
        problem = _path_problem(path)
        if problem or path in self.missing_paths:
            status = 400 if problem else 404
            response = PlainTextResponse(problem or "Not Found", status_code=status)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4000 + status})
            else:
                await response(scope, receive, send)
            return
        await self.app({**scope, IDENTITY_SCOPE_KEY: identity}, receive, send)

    def _under_prefix(self, scope: Scope) -> Scope:
        """The request with the path the console serves it at: a proxy that serves the
        console under a path (`location /jobs/`) may pass that path on or strip it
        (`proxy_pass http://127.0.0.1:3000/;`); either way the same page answers."""
        prefix = self.access.path_prefix
        path = scope.get("path", "")
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return scope
        raw = scope.get("raw_path") or path.encode()
        return {**scope, "path": prefix + path, "raw_path": prefix.encode() + raw}

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        identity: Identity | None,
        peer: str | None,
        status: int,
        title: str,
        message: str,
    ) -> None:
        """Refuse with a page (or a refused handshake), the refusal audited first; past
        the person's budget of refusals, 429 without an entry."""
        if self.audit_log is not None:
            unwritten = await _in_thread(
                self.audit_log.refuse,
                identity,
                "console_request",
                f"{scope.get('method', 'WEBSOCKET')} {scope.get('path', '')[:500]}",
                {"status": status, "refusal": title, "via": scope["type"]},
                peer,
            )
            if unwritten:
                status, title, message = unwritten.status, "Refused", html.escape(str(unwritten))
        if scope["type"] == "websocket":
            # Close before accepting: the browser sees the handshake refused.
            await send({"type": "websocket.close", "code": 4000 + status})
            return
        response = HTMLResponse(
            _PAGE.format(title=title, message=message),
            status_code=status,
            headers={"Cache-Control": "no-store"},
        )
        await response(scope, receive, send)
