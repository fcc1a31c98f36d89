"""`mm-jobs console`: the job console (Dagster's webserver behind our front) on one port.

Built the way `dagster-webserver` builds itself (dagster_webserver/cli.py): the instance
from DAGSTER_HOME, tuned for a long-running server, a WorkspaceProcessContext over the
workspace file, the ASGI app, uvicorn; with our front around the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mm_orchestration.console.access import ConsoleAccess
from mm_orchestration.console.app import ConsoleWebserver, IdentityFront
from mm_orchestration.console.gate import ConsoleAudit
from mm_orchestration.console.refusals import RefusalLimiter
from mm_orchestration.platform.settings import Settings, SettingsError

# dagster-webserver's own defaults (dagster_webserver.cli).
DB_STATEMENT_TIMEOUT_MS = 15_000
DB_POOL_RECYCLE_SECONDS = 3_600
DB_POOL_MAX_OVERFLOW = 20


def build_app(
    process_context: Any, access: ConsoleAccess, settings: Settings, database_url: str
) -> IdentityFront:
    """The ASGI app: the front around dagster-webserver's app (with our routes)."""
    from mm_orchestration.platform.report_store import ReportStore

    audit_log = ConsoleAudit(database_url, RefusalLimiter(access.refusals_per_minute))
    webserver = ConsoleWebserver(
        process_context,
        audit_log=audit_log,
        store=ReportStore.from_settings(settings),
        timezone=settings.timezone,
        app_path_prefix=access.path_prefix,
    )
    return IdentityFront(webserver.create_asgi_app(lifespan=_lifespan), access, audit_log)


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    # As dagster-webserver does: a stop (Ctrl-C, SIGTERM) cancels the lifespan task.
    with contextlib.suppress(asyncio.CancelledError):
        yield


def loopback_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The loopback address `host` spells, in any spelling the system's resolver takes
    for an address (`127.1`, `0x7f.0.0.1`, `[::1]`, `::ffff:127.0.0.1`), or None when it
    is not one. `localhost` is the loopback address 127.0.0.1."""
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name.rstrip(".") == "localhost":
        return ipaddress.IPv4Address("127.0.0.1")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(name)
    except ValueError:
        try:
            # The classic forms inet_aton (and so the resolver) takes: 127.1, 0x7f.1, 2130706433.
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except (OSError, ValueError):
            return None
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address if address.is_loopback else None


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
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_webserver.version import __version__

    from mm_orchestration.platform.instance import open_instance

    access = ConsoleAccess.from_env()
    host = check_binding(host, access)
    settings = Settings.from_env()
    if not settings.database_url:
        raise SettingsError(
            "DATABASE_URL is not set: the console writes its audit log to the portal database"
        )
    if not workspace.exists():
        raise SettingsError(f"--workspace {workspace}: no such file")
    with open_instance(settings) as instance:
        instance.optimize_for_webserver(
            DB_STATEMENT_TIMEOUT_MS, DB_POOL_RECYCLE_SECONDS, DB_POOL_MAX_OVERFLOW
        )
        with WorkspaceProcessContext(
            instance,
            version=__version__,
            read_only=False,
            workspace_load_target=WorkspaceFileTarget(paths=[str(workspace)]),
        ) as process_context:
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
                app, host=host, port=port, log_level=log_level, proxy_headers=False
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
                print(f"mm-jobs: {line}", flush=True)

    return AnnouncingServer(config)
