"""`mm-jobs console`: the job console (Dagster's webserver behind our front) on one port.

Built the way `dagster-webserver` builds itself (dagster_webserver/cli.py): the instance
from DAGSTER_HOME, tuned for a long-running server, Dagster's process context over the
workspace file, the ASGI app, uvicorn; with our hooks in the app and our front around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mm_orchestration.console.access import ConsoleAccess, loopback_address
from mm_orchestration.console.audit_log import ConsoleAudit
from mm_orchestration.console.dagster_private import HookedWebserver, workspace_process_context
from mm_orchestration.console.front import IdentityFront
from mm_orchestration.console.refusals import RefusalLimiter
from mm_orchestration.console.webserver import ConsoleHooks
from mm_orchestration.platform.settings import Settings, SettingsError

# dagster-webserver's own defaults (dagster_webserver.cli).
DB_STATEMENT_TIMEOUT_MS = 15_000
DB_POOL_RECYCLE_SECONDS = 3_600
DB_POOL_MAX_OVERFLOW = 20


def build_app(
    process_context: Any, access: ConsoleAccess, settings: Settings, database_url: str
) -> IdentityFront:
    """The ASGI app: the front around dagster-webserver's app (with our hooks and routes)."""
    from mm_orchestration.platform.report_store import ReportStore

    audit_log = ConsoleAudit(database_url, RefusalLimiter(access.refusals_per_minute))
    hooks = ConsoleHooks(audit_log, ReportStore.from_settings(settings), settings.timezone)
    webserver = HookedWebserver(process_context, hooks, app_path_prefix=access.path_prefix)
    return IdentityFront(webserver.create_asgi_app(lifespan=_lifespan), access, audit_log)


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    # As dagster-webserver does: a stop (Ctrl-C, SIGTERM) cancels the lifespan task.
    with contextlib.suppress(asyncio.CancelledError):
        yield


def check_binding(host: str, access: ConsoleAccess) -> str:
    """Development identity (the local OS user, an admin) only where nobody else reaches.
    Returns the address to bind (a loopback address as an address, `[::1]` as `::1`)."""
    address = loopback_address(host)
    if access.mode != "local":
        return str(address) if address is not None and host.strip() != "localhost" else host
    if address is None:
        raise SettingsError(
            f"MM_CONSOLE_AUTH=local makes everyone who reaches the console {access.local_user}; "
            f"it serves only on a loopback address, not {host}. Use MM_CONSOLE_AUTH=proxy "
            "behind the identity proxy"
        )
    return host if host.strip() == "localhost" else str(address)


def serve(workspace: Path, host: str, port: int, log_level: str = "warning") -> int:
    """Serve the console until SIGINT or SIGTERM; settings are checked first."""
    import uvicorn

    from mm_orchestration.monitoring.process_log import configure_process
    from mm_orchestration.platform.db import connect
    from mm_orchestration.platform.instance import open_instance

    # Every line the console writes, uvicorn's and Dagster's included, is a JSON object on
    # stderr (a log collector reads one per line); uvicorn is told to leave logging alone.
    configure_process(logging.getLevelNamesMapping()[log_level.upper()])
    # The code server the console starts for the project's workspace is Dagster's `dagster
    # api grpc`, started with this process's environment: click reads its --log-format
    # from this variable, the only way to hand it one.
    os.environ.setdefault("DAGSTER_CLI_API_GRPC_LOG_FORMAT", "json")
    access = ConsoleAccess.from_env()
    host = check_binding(host, access)
    settings = Settings.from_env()
    if not settings.database_url:
        raise SettingsError(
            "DATABASE_URL is not set: the console writes its audit log to the portal database"
        )
    if not workspace.exists():
        raise SettingsError(f"--workspace {workspace}: no such file")
    # Every action is audited there before it is done: a console that cannot write its
    # audit log could refuse everything, so it says which setting is wrong instead of
    # starting (as it does for Dagster's storage in open_instance).
    connect(settings.database_url, setting="DATABASE_URL").close()
    with open_instance(settings) as instance:
        instance.optimize_for_webserver(
            DB_STATEMENT_TIMEOUT_MS, DB_POOL_RECYCLE_SECONDS, DB_POOL_MAX_OVERFLOW
        )
        with workspace_process_context(instance, workspace) as process_context:
            app = build_app(process_context, access, settings, settings.database_url)
            how = (
                f"development: everyone is the local OS user {access.local_user}"
                if access.mode == "local"
                else f"identity from {access.header} sent by "
                + ", ".join(str(n) for n in access.trusted_proxies)
                + f" with the proxy secret; public address {access.public_url}"
            )
            # proxy_headers=False: the peer the front judges is the TCP peer. Uvicorn would
            # otherwise replace it with X-Forwarded-For from 127.0.0.1, so the proxy's own
            # requests would look like the browser's address and anyone could name one.
            config = uvicorn.Config(
                app, host=host, port=port, log_level=log_level, proxy_headers=False, log_config=None
            )
            _announcing_server(config, f"job console on http://{host}:{port} ({how})").run()
    return 0


def _announcing_server(config: Any, line: str) -> Any:
    """uvicorn's server, saying it serves only once its socket listens: whoever waits
    for the line (a supervisor, a test, an operator) can connect when they read it."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:  # a failed bind has been reported by uvicorn
                # WARNING: the level the console logs at by default, so that it is seen.
                logging.getLogger("mm_orchestration.console").warning(line)

    return AnnouncingServer(config)
