"""`mm-jobs dev` and `mm-jobs prod-local`: the whole system on this machine, on the embedded
PostgreSQL unless DATABASE_URL is set. Never used in production."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mm_orchestration.cli.arguments import whole
from mm_orchestration.platform.settings import PORT_RANGE, Settings


def register(sub: Any) -> None:
    """Add `mm-jobs dev` and `mm-jobs prod-local`."""
    p = sub.add_parser("dev", help="embedded PostgreSQL + the job console and daemon on :3000")
    p.add_argument("--port", type=whole(*PORT_RANGE), default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--grpc-port", type=whole(*PORT_RANGE), default=None, help="code server (default: free)"
    )
    p.add_argument("--no-demo", action="store_true", help="do not load demo data")
    # Reports are served by the console now; kept so that older scripts still start.
    p.add_argument("--reports-port", type=whole(*PORT_RANGE), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser(
        "prod-local",
        help="the production topology here: gRPC code server, daemon, webserver (staging)",
    )
    p.add_argument("--port", type=whole(*PORT_RANGE), default=3000, help="job console")
    p.add_argument("--grpc-port", type=whole(*PORT_RANGE), default=4266, help="code server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--no-demo", action="store_true", help="do not load demo data")
    p.add_argument("--reports-port", type=whole(*PORT_RANGE), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_prod_local)


@contextlib.contextmanager
def _local_stack(args: argparse.Namespace, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """What `dev` and `prod-local` share: PostgreSQL (embedded unless DATABASE_URL is
    set) with migrations and demo data, and DAGSTER_HOME. Yields the environment of the
    stack's processes: `env` with the data folder, the database and the instance filled
    in (this process's own environment is left as it is). Reports download from the
    console itself."""
    from psycopg import sql

    from mm_orchestration.local.demo_data import seed_demo
    from mm_orchestration.local.embedded_pg import EmbeddedPostgres
    from mm_orchestration.local.supervisor import say
    from mm_orchestration.platform.db import connect
    from mm_orchestration.platform.instance import home_dir, open_instance, write_home
    from mm_orchestration.platform.migrate import migrate

    settings = Settings.from_env(env)
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Absolute for every process started from here: the Dagster ones run in DAGSTER_HOME.
    env = {**env, "MM_DATA_DIR": str(data_dir)}
    embedded = not settings.database_url
    server = EmbeddedPostgres(data_dir / "postgres") if embedded else None
    try:
        if server is not None:
            server.start()
            say(f"embedded PostgreSQL on 127.0.0.1:{server.port} (data in {server.data_dir})")
            with connect(server.url("postgres"), autocommit=True) as conn:
                for name in ("portal", "dagster"):
                    if not conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", [name]
                    ).fetchone():
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            env["DATABASE_URL"] = server.url("portal")
        # A DATABASE_URL that cannot be used is refused naming it (exit 2), not a traceback.
        setting = None if embedded else "DATABASE_URL"
        with connect(env["DATABASE_URL"], autocommit=True, setting=setting) as conn:
            applied = migrate(conn, with_portal_schema=embedded)
            if applied:
                print("mm-jobs: applied " + ", ".join(applied))
            if embedded and not args.no_demo:
                empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM portal.tenants)").fetchone()
                if empty and empty[0]:
                    with conn.transaction():
                        counts = seed_demo(conn)
                    loaded = f"{counts.tenants} tenants, {counts.users} users"
                    print(f"mm-jobs: demo data loaded ({loaded})")
        # Every process of the stack, and `mm-jobs run` from another terminal, opens this
        # one instance; an embedded server's storage is written into it (no secret).
        settings = Settings.from_env(env)
        home = write_home(home_dir(settings), server.url("dagster") if server else None)
        env["DAGSTER_HOME"] = str(home)
        settings = Settings.from_env(env)
        open_instance(settings).dispose()  # refuses a storage in the portal DB
        yield env
    finally:
        if server is not None:
            server.stop()
            say("embedded PostgreSQL stopped")


def _console_defaults(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    """The local stacks' console: the local OS user (labelled as such) unless the identity
    proxy is configured, and report links to the console itself. Returns `env` with those
    defaults; a bad console setting stops the start, naming it."""
    from mm_orchestration.console.access import ConsoleAccess, loopback_address

    # A loopback address however spelled (127.1, [::1]) as the address itself: the
    # processes bind it and the report links must be a URL the settings accept.
    address = loopback_address(args.host)
    if address is not None and args.host.strip() != "localhost":
        args.host = str(address)
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    env = {"MM_CONSOLE_AUTH": "local", "MM_REPORTS_URL": f"http://{url_host}:{args.port}", **env}
    ConsoleAccess.from_env(env)
    return env


def cmd_dev(args: argparse.Namespace) -> int:
    """The console, the daemon and a reloading code server on the local stack."""
    from mm_orchestration.local.embedded_pg import free_port
    from mm_orchestration.local.topology import DevConsole

    env = _console_defaults(args, dict(os.environ))
    grpc_port = args.grpc_port or free_port()

    def console(env: dict[str, str]) -> DevConsole:
        home = Path(env["DAGSTER_HOME"])
        return DevConsole(
            dagster_home=home, env=env, host=args.host, grpc_port=grpc_port, web_port=args.port
        )

    return _serve(args, env, console, f"job console on http://{args.host}:{args.port}")


def cmd_prod_local(args: argparse.Namespace) -> int:
    """The production topology on this machine: code server, daemon and webserver as
    three supervised processes, MM_ENV=staging unless set."""
    from mm_orchestration.local.topology import Topology

    env = _console_defaults(args, {"MM_ENV": "staging", **os.environ})

    def topology(env: dict[str, str]) -> Topology:
        home = Path(env["DAGSTER_HOME"])
        return Topology(
            dagster_home=home, env=env, host=args.host, grpc_port=args.grpc_port, web_port=args.port
        )

    return _serve(
        args,
        env,
        topology,
        f"code server on {args.host}:{args.grpc_port} (gRPC), daemon, job console on "
        f"http://{args.host}:{args.port} (MM_ENV={env['MM_ENV']})",
    )


def _serve(args: argparse.Namespace, env: dict[str, str], make: Any, started: str) -> int:
    """The local stack, then the stack's processes under the one supervisor, until a stop
    signal of any kind (see mm_orchestration.local.supervisor); everything stops on the way out."""
    from mm_orchestration.cli.arguments import refuse
    from mm_orchestration.local.supervisor import StopRequested, say, stop_signals

    with stop_signals():
        try:
            with _local_stack(args, env) as stack_env:
                stack = make(stack_env)
                try:
                    stack.start_all()
                except RuntimeError as exc:
                    stack.stop_all()
                    return refuse(str(exc), code=1)
                except StopRequested:
                    stack.stop_all()
                    return 0
                say(f"{started}  (Ctrl-C stops everything)")
                return int(stack.supervise())
        except StopRequested:
            return 0
