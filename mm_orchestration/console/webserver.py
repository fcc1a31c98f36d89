"""What the console changes in Dagster's webserver (ConsoleHooks, called by
dagster_private.HookedWebserver in place of each method it overrides): each request's
Dagster context carries the person's role as Dagster permissions, so the UI enables only
what the role allows and Dagster's own checks refuse the rest; the GraphQL middleware
(middleware.ConsoleGate) judges and audits every mutation; Dagster's REST endpoints that
change state (reporting asset events) are judged and audited the same way; GraphQL over
HTTP is one operation per request, and over the websocket carries only subscriptions;
downloads of logs and debug files name what exists; every page names the person; our own
routes (routes.ConsoleRoutes) sit before Dagster's.
"""

from __future__ import annotations

import html
import json
import logging
import re
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from graphql import GraphQLError, OperationType, parse
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from mm_orchestration.console.access import identity_in
from mm_orchestration.console.audit_log import AuditUnavailable, ConsoleAudit, ended_by
from mm_orchestration.console.dagster_private import Downstream, reported_asset
from mm_orchestration.console.graphql_requests import (
    BadBody,
    code_reads,
    graphql_request_problem,
    json_body,
    ws_message_problem,
)
from mm_orchestration.console.middleware import ConsoleGate, ConsoleRefusal
from mm_orchestration.console.policy import dagster_permission, may
from mm_orchestration.console.routes import ConsoleRoutes
from mm_orchestration.platform import audit
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE

log = logging.getLogger("mm.console")
_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LOG_SEGMENT = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-.]{0,254}$")


class ConsoleHooks:
    """dagster_private.WebserverHooks: our identity, roles, audit and downloads in
    Dagster's webserver (the module's docstring)."""

    def __init__(
        self, audit_log: ConsoleAudit, store: ReportStore | None, timezone: str = BUSINESS_TIMEZONE
    ) -> None:
        self._audit_log = audit_log
        self._routes = ConsoleRoutes(audit_log, store, timezone)

    def graphql_middleware(self) -> list[Any]:
        return [ConsoleGate(self._audit_log)]

    def role(self, conn: HTTPConnection) -> str | None:
        identity = identity_in(conn.scope)
        return identity.role if identity else None

    def permitted(self, role: str | None, permission: str) -> bool:
        return dagster_permission(role, permission)

    def routes(self) -> list[BaseRoute]:
        return self._routes.routes()

    async def report_asset_event(
        self, request: Request, kind: str, downstream: Callable[[Request], Awaitable[JSONResponse]]
    ) -> JSONResponse:
        """Dagster's REST reporting of an asset event, judged (admins only) and audited
        like a mutation: the entry names the asset and partition wherever the request
        gives them (path, body or query, read as Dagster reads them), and ends with what
        Dagster answered."""
        identity = identity_in(request.scope)
        try:
            body = await json_body(request)
        except BadBody as exc:
            if request.headers.get("content-type") == "application/json":
                return JSONResponse({"error": str(exc)}, status_code=400)
            body = {}  # Dagster reads the body only as JSON, and refuses other types itself
        asset, partition, check = reported_asset(request, body)
        allowed = may(identity, "admin")
        who = identity.role if identity else "nobody"
        what = asset or "an asset it does not name"
        refusal = None if allowed else f"{who} may not {kind.replace('_', ' ')} {what}"
        try:
            entry = await run_in_threadpool(
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
        await run_in_threadpool(self._audit_log.settle, entry, outcome, None, result)
        return response

    def graphql_errors(self, errors: Any, downstream: Callable[[Any], Any]) -> list[Any]:
        """Dagster's error list, but the gate's refusals carry their message alone: a
        refusal is no server fault, and its trace would show the gate's code."""
        refusals = [e for e in errors if isinstance(e.original_error, ConsoleRefusal)]
        others = [e for e in errors if not isinstance(e.original_error, ConsoleRefusal)]
        formatted = list(downstream(others)) if others else []
        return [e.formatted for e in refusals] + formatted

    def status_code(
        self, resolver_errors: Any, captured_errors: Any, downstream: Callable[[Any, Any], int]
    ) -> int:
        """A refusal is the client's error (400), not the server's (500). What Dagster
        caught and answered as a server error (a PythonError it captured: 500) is one line
        of the console's log with its traceback, secrets masked: Dagster itself logs none."""
        for error in captured_errors or []:
            trace = "".join(traceback.format_exception(error)).rstrip()
            said = audit.masked_text(str(error))[:1000]
            line = {
                "event": f"graphql: a server error, Dagster's: {type(error).__name__}: {said}",
                "error": type(error).__name__,
                "exception": audit.masked_text(trace)[:20000],
            }
            log.error(json.dumps(line, separators=(",", ":")))
        if resolver_errors:
            resolver_errors = [
                GraphQLError(e.message) if isinstance(e.original_error, ConsoleRefusal) else e
                for e in resolver_errors
            ]
        return int(downstream(resolver_errors, captured_errors))

    async def graphql_http(self, request: Request, downstream: Downstream) -> Response:
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
            problem = await graphql_request_problem(request)
            if problem:
                unwritten = await run_in_threadpool(
                    self._audit_log.refuse,
                    identity_in(request.scope),
                    "graphql_request",
                    None,
                    {"via": f"graphql {request.method}", "refusal": problem},
                )
                if unwritten:
                    problem = str(unwritten)
                status = unwritten.status if unwritten else 400
                return JSONResponse({"errors": [{"message": problem}]}, status_code=status)
        response = await downstream(request)
        if request.method == "GET" and isinstance(response, HTMLResponse):
            return self._with_badge(request, response)
        return response

    async def graphql_ws(
        self, websocket: WebSocket, downstream: Callable[[WebSocket], Awaitable[None]]
    ) -> None:
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
            problem = ws_message_problem(message)
            if problem:
                await websocket.close(code=4400, reason=problem)
                raise WebSocketDisconnect(4400, problem)
            return message

        websocket.receive_json = checked  # type: ignore[method-assign]
        await downstream(websocket)

    async def captured_logs(self, request: Request, downstream: Downstream) -> Response:
        """Dagster's download of a step's captured output, for log keys as Dagster writes
        them (`<run id>/compute_logs/<step>.<out|err>`-like segments of letters, digits,
        `_`, `-`, `.`); anything else is no log of ours (404), never a 500 or a path
        outside the logs folder."""
        segments = request.path_params.get("path", "").split("/")
        if len(segments) < 2 or not all(_LOG_SEGMENT.fullmatch(s) for s in segments):
            return PlainTextResponse("no such log", status_code=404)
        try:
            return await downstream(request)
        except (OSError, ValueError):
            return PlainTextResponse("no such log", status_code=404)

    async def debug_file(
        self, request: Request, find_run: Callable[[str], Any], downstream: Downstream
    ) -> Response:
        """Dagster's debug file of a run (what `dagster debug import` reads); a run id
        that names no run is a 404, not a 500."""
        run_id = request.path_params.get("run_id", "")
        if not _RUN_ID.fullmatch(run_id):
            return PlainTextResponse("no such run", status_code=404)
        if find_run(run_id) is None:
            return PlainTextResponse("no such run", status_code=404)
        return await downstream(request)

    async def subscription(
        self,
        websocket: WebSocket,
        query: str,
        variables: dict[str, Any] | None,
        schema: Any,
        downstream: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Dagster's subscription, for subscriptions only (mutations are POSTed) that
        select no field that runs code; anything else refused whole, and audited."""
        try:
            document = parse(query)
        except GraphQLError as error:
            return None, error.formatted
        kinds = {d.operation for d in document.definitions if hasattr(d, "operation")}
        reads = code_reads(document, schema)
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
                identity_in(websocket.scope),
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
        return await downstream()

    def index_html(self, request: Request, downstream: Callable[[Request], Any]) -> Response:
        """Dagster's page, with the badge naming the person."""
        response = downstream(request)
        if not isinstance(response, HTMLResponse):
            return response
        return self._with_badge(request, response)

    def _with_badge(self, request: Request, response: HTMLResponse) -> Response:
        """The page with a badge naming who the console acts for (development: the local
        OS user, in yellow)."""
        identity = identity_in(request.scope)
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
