"""Everything the console takes from Dagster that Dagster does not promise to keep: its
private modules (`dagster._core...`, dagster-webserver's and dagster-graphql's internals,
dagster-shared) and the methods of `DagsterWebserver` the console overrides.

The one module of the project that touches them, written for the pinned versions
(WRITTEN_FOR); tests/console/test_dagster_private.py fails when an upgrade changes any of
them, so an upgrade starts here. What the console does with each is elsewhere: the
webserver's overrides hand their work to webserver.ConsoleHooks (WebserverHooks), with
Dagster's own method to call on.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dagster._core.storage.tags import HIDDEN_TAG_PREFIX as HIDDEN_TAG_PREFIX
from dagster._core.storage.tags import (
    MULTIDIMENSIONAL_PARTITION_PREFIX as MULTIDIMENSIONAL_PARTITION_PREFIX,
)
from dagster._core.storage.tags import SYSTEM_TAG_PREFIX as SYSTEM_TAG_PREFIX
from dagster._core.workspace.context import WorkspaceRequestContext
from dagster._core.workspace.permissions import (
    LOCATION_SCOPED_PERMISSIONS,
    PermissionResult,
    Permissions,
)
from dagster_webserver.webserver import DagsterWebserver
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.websockets import WebSocket

# The versions this module was written for (dagster, dagster-webserver, dagster-graphql
# and dagster-shared are released together under one number).
WRITTEN_FOR = "1.13.27"


# -- GraphQL: the pinned schema, the errors the UI shows, run config as Dagster reads it ----


@functools.cache
def graphql_schema() -> Any:
    """The GraphQL schema of the pinned Dagster (graphql-core's), as its webserver serves it."""
    from dagster_graphql.schema import create_schema

    return create_schema().graphql_schema


def python_error(message: str) -> Any:
    """Dagster's `PythonError` result saying `message`, without a stack trace."""
    from dagster_graphql.schema.errors import GraphenePythonError
    from dagster_shared.error import SerializableErrorInfo

    return GraphenePythonError(
        SerializableErrorInfo(message=message, stack=[], cls_name="PermissionDenied")
    )


def unauthorized_error(message: str) -> Any:
    """Dagster's `UnauthorizedError` result saying `message`."""
    from dagster_graphql.schema.errors import GrapheneUnauthorizedError

    return GrapheneUnauthorizedError(message=message)


@dataclass(frozen=True)
class ResolverResult:
    """What a mutation's resolver returned, read from Dagster's graphene types: its type's
    name, whether it is an error (then its message and errors, as given), else the run or
    backfill it started."""

    typename: str
    failed: bool
    message: Any = None
    errors: list[Any] = field(default_factory=list)
    run_id: str | None = None
    backfill_id: str | None = None


def resolver_result(value: Any) -> ResolverResult:
    meta = getattr(type(value), "_meta", None)
    typename = getattr(meta, "name", type(value).__name__)
    interfaces = {i._meta.name for i in getattr(meta, "interfaces", ())}
    if interfaces & {"Error", "PipelineConfigValidationInvalid"} or typename.endswith("Error"):
        message = getattr(value, "message", None)
        if message is None:
            message = getattr(value, "_message", None)  # a PythonError's
        # Run config Dagster rejects says why in its errors, not in a message.
        errors = [getattr(e, "message", None) for e in getattr(value, "errors", None) or []]
        return ResolverResult(typename, True, message, errors)
    run = getattr(value, "run", None)
    run_id = getattr(run, "runId", None) if run is not None else None
    backfill = getattr(value, "backfill_id", None) or getattr(value, "backfillId", None)
    return ResolverResult(
        typename,
        False,
        run_id=str(run_id) if run_id else None,
        backfill_id=str(backfill) if backfill else None,
    )


def batch_results(value: Any) -> list[Any] | None:
    """The result of each run of a `launchMultipleRuns`, or None for any other result."""
    return getattr(value, "launchMultipleRunsResult", None)


def load_run_config_yaml(text: str) -> Any:
    """Run config YAML read by Dagster's own loader, as a launch's resolver reads it."""
    from dagster_shared.yaml_utils import load_run_config_yaml as load

    return load(text)


# -- what a request's Dagster context knows ------------------------------------------------


class ContextLookups:
    """policy.Lookups over Dagster's request context: runs and backfills from its instance,
    schedules and sensors from its workspace (no context: nothing is known)."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._instance = getattr(context, "instance", None)

    def run(self, run_id: str) -> Any:
        return self._instance.get_run_by_id(run_id) if self._instance is not None else None

    def backfill(self, backfill_id: str) -> Any:
        if self._instance is None or not hasattr(self._instance, "get_backfill"):
            return None
        return self._instance.get_backfill(backfill_id)

    def partitions(
        self, job: str | None, assets: list[str], location: str | None, repository: str | None
    ) -> list[Any] | None:
        """The partitionings a run of `job` (or of `assets`, as `ops/name`) must name a
        partition of, from the workspace's snapshots; None when unknown."""
        from dagster import AssetKey

        from mm_orchestration.platform.partitions import partitions_in

        if self._context is None:
            return None
        keys = [AssetKey.from_user_string(asset) for asset in assets]
        return partitions_in(self._context, job, keys, location, repository)

    def partition_set(
        self, name: str, location: str | None, repository: str | None
    ) -> tuple[str, Any] | None:
        """(job, partitioning) of a backfill's partition set; None when unknown."""
        from mm_orchestration.platform.partitions import partition_set_in

        if self._context is None:
            return None
        return partition_set_in(self._context, name, location, repository)

    def instigator_name(self, args: Mapping[str, Any]) -> str | None:
        """A schedule or sensor switched off by its id: its name, from the workspace."""
        from dagster._core.remote_representation.external import CompoundID

        origin = args.get("scheduleOriginId") or args.get("jobOriginId")
        selector_id = args.get("scheduleSelectorId") or args.get("jobSelectorId")
        compound = args.get("id")
        try:
            if compound and CompoundID.is_valid_string(compound):
                cid = CompoundID.from_string(compound)
                origin, selector_id = cid.remote_origin_id, cid.selector_id
            if not (origin or selector_id) or self._context is None:
                return None
            for location in self._context.code_locations:
                for repository in location.get_repositories().values():
                    for item in [*repository.get_schedules(), *repository.get_sensors()]:
                        if origin == item.get_remote_origin_id() or selector_id == item.selector_id:
                            return str(item.name)
        except Exception:  # a name is a nicety; the id is still recorded in the variables
            return None
        return None


def reported_asset(request: Request, body: Any) -> tuple[str | None, str | None, str | None]:
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


# -- the webserver: roles as Dagster's permissions, and the methods the console changes ----


Permitted = Callable[[str | None, str], bool]


def role_permissions(role: str | None, permitted: Permitted) -> dict[str, PermissionResult]:
    """Dagster's permission map for a role (`permitted`: whether the role has a permission,
    by its name): what the UI enables and Dagster allows."""
    result = {}
    for permission in Permissions:
        enabled = permitted(role, permission.value)
        reason = None if enabled else f"Your role ({role or 'none'}) does not allow this."
        result[permission.value] = PermissionResult(enabled=enabled, disabled_reason=reason)
    return result


class RoleRequestContext(WorkspaceRequestContext):
    """Dagster's request context with the permissions of the person's role."""

    def __init__(self, role: str | None, permitted: Permitted, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._role = role
        self._permitted = permitted

    @property
    def permissions(self) -> Mapping[str, PermissionResult]:
        return role_permissions(self._role, self._permitted)

    def permissions_for_location(self, *, location_name: str) -> Mapping[str, PermissionResult]:
        return {
            k: v
            for k, v in role_permissions(self._role, self._permitted).items()
            if k in LOCATION_SCOPED_PERMISSIONS
        }


Downstream = Callable[[Request], Awaitable[Any]]


class WebserverHooks(Protocol):
    """What the console does in place of each DagsterWebserver method it changes; each
    gets Dagster's own method (`downstream`) to call on."""

    def graphql_middleware(self) -> list[Any]: ...

    def role(self, conn: HTTPConnection) -> str | None: ...

    def permitted(self, role: str | None, permission: str) -> bool: ...

    def routes(self) -> list[BaseRoute]: ...

    async def report_asset_event(
        self, request: Request, kind: str, downstream: Callable[[Request], Awaitable[JSONResponse]]
    ) -> JSONResponse: ...

    def graphql_errors(self, errors: Any, downstream: Callable[[Any], Any]) -> list[Any]: ...

    def status_code(
        self, resolver_errors: Any, captured_errors: Any, downstream: Callable[[Any, Any], int]
    ) -> int: ...

    async def graphql_http(self, request: Request, downstream: Downstream) -> Response: ...

    async def graphql_ws(
        self, websocket: WebSocket, downstream: Callable[[WebSocket], Awaitable[None]]
    ) -> None: ...

    async def captured_logs(self, request: Request, downstream: Downstream) -> Response: ...

    async def debug_file(
        self, request: Request, find_run: Callable[[str], Any], downstream: Downstream
    ) -> Response: ...

    async def subscription(
        self,
        websocket: WebSocket,
        query: str,
        variables: dict[str, Any] | None,
        schema: Any,
        downstream: Callable[[], Awaitable[Any]],
    ) -> Any: ...

    def index_html(self, request: Request, downstream: Callable[[Request], Any]) -> Response: ...


class HookedWebserver(DagsterWebserver):
    """dagster-webserver with each method the console changes handed to `hooks`
    (tests/console/test_dagster_private.py holds each one's signature as written for)."""

    def __init__(self, process_context: Any, hooks: WebserverHooks, app_path_prefix: str = ""):
        self._hooks = hooks
        super().__init__(process_context, app_path_prefix=app_path_prefix)

    def build_graphql_middleware(self) -> list[Any]:
        return self._hooks.graphql_middleware()

    def _make_request_context(self, conn: HTTPConnection) -> Any:
        role = self._hooks.role(conn)
        permitted = self._hooks.permitted
        pc = self._process_context
        return RoleRequestContext(
            role,
            permitted,
            instance=pc.instance,
            current_workspace=pc.get_current_workspace(),
            process_context=pc,
            version=pc.version,
            source=conn,
            # A role that may do nothing reads only.
            read_only=not any(permitted(role, p.value) for p in Permissions),
        )

    def build_routes(self) -> list[BaseRoute]:
        """Dagster's routes with ours before its catch-all page; under a path prefix,
        inside the prefix as Dagster's are (`/jobs/audit-trail.csv`), or the UI's page
        would answer for them."""
        ours = self._hooks.routes()
        routes = list(super().build_routes())
        if not self._app_path_prefix:
            return ours + routes
        mounted = [r for r in routes if isinstance(r, Mount) and r.path == self._app_path_prefix]
        assert len(mounted) == 1, "Dagster mounts its routes under the path prefix"
        inside = Mount(self._app_path_prefix, routes=ours + list(mounted[0].routes))
        return [inside if r is mounted[0] else r for r in routes]

    async def report_asset_materialization_endpoint(self, request: Request) -> JSONResponse:
        return await self._hooks.report_asset_event(
            request, "report_asset_materialization", super().report_asset_materialization_endpoint
        )

    async def report_asset_check_endpoint(self, request: Request) -> JSONResponse:
        return await self._hooks.report_asset_event(
            request, "report_asset_check", super().report_asset_check_endpoint
        )

    async def report_asset_observation_endpoint(self, request: Request) -> JSONResponse:
        return await self._hooks.report_asset_event(
            request, "report_asset_observation", super().report_asset_observation_endpoint
        )

    def handle_graphql_errors(self, errors: Any) -> list[Any]:
        return self._hooks.graphql_errors(errors, super().handle_graphql_errors)

    def _determine_status_code(self, resolver_errors: Any, captured_errors: Any) -> int:
        return self._hooks.status_code(
            resolver_errors, captured_errors, super()._determine_status_code
        )

    async def graphql_http_endpoint(self, request: Request) -> Response:
        return await self._hooks.graphql_http(request, super().graphql_http_endpoint)

    async def graphql_ws_endpoint(self, websocket: WebSocket) -> None:
        await self._hooks.graphql_ws(websocket, super().graphql_ws_endpoint)

    async def download_captured_logs_endpoint(self, request: Request) -> Response:
        return await self._hooks.captured_logs(request, super().download_captured_logs_endpoint)

    async def download_debug_file_endpoint(self, request: Request) -> Response:
        def find_run(run_id: str) -> Any:
            with self.request_context(request) as context:
                return context.instance.get_run_by_id(run_id)

        return await self._hooks.debug_file(request, find_run, super().download_debug_file_endpoint)

    async def execute_graphql_subscription(
        self,
        websocket: WebSocket,
        operation_id: str,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> Any:
        dagsters = functools.partial(
            super().execute_graphql_subscription,
            websocket,
            operation_id,
            query,
            variables,
            operation_name,
        )
        schema = self._graphene_schema.graphql_schema
        return await self._hooks.subscription(websocket, query, variables, schema, dagsters)

    def index_html_endpoint(self, request: Request) -> Response:
        return self._hooks.index_html(request, super().index_html_endpoint)


# -- serving: the workspace as dagster-webserver loads it ------------------------------------


@contextmanager
def workspace_process_context(instance: Any, workspace: Path) -> Iterator[Any]:
    """Dagster's process context over a workspace file, as `dagster-webserver` makes it."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_webserver.version import __version__

    with WorkspaceProcessContext(
        instance,
        version=__version__,
        read_only=False,
        workspace_load_target=WorkspaceFileTarget(paths=[str(workspace)]),
    ) as process_context:
        yield process_context
