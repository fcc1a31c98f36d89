"""What a request to /graphql must look like before Dagster reads it: a mutation comes
as a POST of JSON (what another site's page cannot make a browser send), one query or
mutation per request over HTTP (no batches), subscriptions only over the websocket, each
websocket message one of the graphql-ws protocol. Dagster's own handlers would answer
most of what these refuse with a 500.
"""

from __future__ import annotations

import json
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    parse,
)
from starlette.requests import Request

from mm_orchestration.console.mutations import CODE_READS


def transport_problem(source: Any) -> str | None:
    """Why a mutation may not come this way (None: a POST of JSON or GraphQL)."""
    method = getattr(source, "method", None)
    if method is None:  # a websocket: handled where subscriptions start
        return None
    # The media type itself, parsed: `text/plain;charset=application/json` is a simple
    # request any site's page may send, and it merely mentions JSON.
    content_type = source.headers.get("content-type", "").split(";")[0].strip().lower()
    if method != "POST" or content_type not in ("application/json", "application/graphql"):
        return (
            "mutations are accepted only as a POST of application/json: another site's page "
            "can make a signed-in browser send a GET or a form"
        )
    return None


async def graphql_request_problem(request: Request) -> str | None:
    """Why a request to /graphql is not one query or mutation as Dagster's endpoint reads
    it (a POST's JSON body, a POST of application/graphql, else the query string), or
    None: Dagster's own handler would answer these with a 500."""
    content_type = request.headers.get("content-type", "")
    data: Any
    if request.method == "POST" and "application/json" in content_type:
        try:
            data = await json_body(request)
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


def code_reads(document: DocumentNode, schema: GraphQLSchema) -> list[str]:
    """The fields of `document` that run code on the code server (mutations.CODE_READS),
    as `Type.field`, wherever the selection reaches them (fragments included)."""
    from graphql import TypeInfo, TypeInfoVisitor, Visitor, visit

    found: set[str] = set()
    info = TypeInfo(schema)

    class Fields(Visitor):
        def enter_field(self, node: Any, *_: Any) -> None:
            parent = info.get_parent_type()
            if parent is not None and (parent.name, node.name.value) in CODE_READS:
                found.add(f"{parent.name}.{node.name.value}")

    visit(document, TypeInfoVisitor(info, Fields()))
    return sorted(found)


def ws_message_problem(message: Any) -> str | None:
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


async def json_body(request: Request) -> Any:
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
