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


class StackRunning(RuntimeError):
    """Another local stack is alive in this data folder or on this Dagster instance: the
    start is refused before it touches anything. `fields`: the holder's pid and console, for
    the refusal's JSON line."""

    def __init__(self, message: str, fields: dict[str, Any]) -> None:
        super().__init__(message)
        self.fields = fields


def _claim_folders(
    claims: contextlib.ExitStack, data_dir: Path, home: Path, about: dict[str, Any]
) -> None:
    """Claim the data folder (its embedded PostgreSQL, reports and mail) and the Dagster
    instance's folder for this stack, for as long as `claims` is open; StackRunning naming
    the live stack that holds either. A stack that was killed holds nothing any more, so
    its leftovers are stopped by the start that follows (the embedded server's own claim,
    the supervisor's pid file)."""
    from mm_orchestration.local.claims import Claim, FolderInUse
    from mm_orchestration.local.supervisor import STACK_LOCK

    for folder, what, setting in (
        (data_dir, f"in {data_dir}", "another data folder (MM_DATA_DIR)"),
        (home, f"on the Dagster instance in {home}", "another Dagster instance (DAGSTER_HOME)"),
    ):
        try:
            claims.enter_context(Claim(folder / STACK_LOCK).take(**about))
        except FolderInUse as exc:
            raise StackRunning(_running_message(exc, what, setting), _holder_fields(exc)) from None


def _running_message(exc: Any, what: str, setting: str) -> str:
    holder = exc.holder
    command = holder.get("command") or "a local stack"
    details = [f"pid {exc.pid}" if exc.pid else "pid unknown"]
    if holder.get("console"):
        details.append(f"job console on {holder['console']}")
    if holder.get("dataDir") and not what.endswith(str(holder["dataDir"])):
        details.append(f"data in {holder['dataDir']}")
    stop = (
        f"Ctrl-C in its terminal, or kill -TERM {exc.pid}" if exc.pid else "Ctrl-C in its terminal"
    )
    return (
        f"{command} is already running {what} ({', '.join(details)}); nothing was started "
        f"or changed: stop it first ({stop}), or start this one on {setting}"
    )


def _holder_fields(exc: Any) -> dict[str, Any]:
    fields = {"pid": exc.pid}
    fields.update({k: exc.holder[k] for k in ("console", "dataDir") if exc.holder.get(k)})
    return fields


@contextlib.contextmanager
def _local_stack(
    args: argparse.Namespace, env: dict[str, str], about: dict[str, Any]
) -> Iterator[dict[str, str]]:
    """What `dev` and `prod-local` share: this stack's claim on its folders (refused with
    StackRunning while another stack holds them), PostgreSQL (embedded unless DATABASE_URL
    is set) with migrations and demo data, and DAGSTER_HOME. Yields the environment of the
    stack's processes: `env` with the data folder, the database and the instance filled in
    (this process's own environment is left as it is). Reports download from the console
    itself. `about`: what the claim records for the next comer (command, console URL)."""
    from psycopg import sql

    from mm_orchestration.local.demo_data import seed_demo
    from mm_orchestration.local.embedded_pg import EmbeddedPostgres
    from mm_orchestration.local.supervisor import say
    from mm_orchestration.platform.db import connect
    from mm_orchestration.platform.instance import home_dir, open_instance, write_home
    from mm_orchestration.platform.migrate import migrate

    settings = Settings.from_env(env)
    data_dir = Path(settings.data_dir).resolve()
    with contextlib.ExitStack() as claims:
        # First of all: a stack already running here is left exactly as it is (its
        # database, its instance's dagster.yaml and pid file, its runs in flight).
        _claim_folders(claims, data_dir, home_dir(settings), {**about, "dataDir": str(data_dir)})
        # Absolute for every process started from here: the Dagster ones run in DAGSTER_HOME.
        env = {**env, "MM_DATA_DIR": str(data_dir)}
        embedded = not settings.database_url
        server = EmbeddedPostgres(data_dir / "postgres") if embedded else None
        if server is not None:
            # All or nothing (a failed start leaves no server); stopped when the stack is.
            server.start()

            def stop_server() -> None:
                server.stop()
                say("embedded PostgreSQL stopped")

            claims.callback(stop_server)
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
    env = {"MM_CONSOLE_AUTH": "local", "MM_REPORTS_URL": _console_url(args), **env}
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

    return _serve(args, env, console, "mm-jobs dev", f"job console on {_console_url(args)}")


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
        "mm-jobs prod-local",
        f"code server on {args.host}:{args.grpc_port} (gRPC), daemon, job console on "
        f"{_console_url(args)} (MM_ENV={env['MM_ENV']})",
    )


def _console_url(args: argparse.Namespace) -> str:
    host = f"[{args.host}]" if ":" in args.host else args.host
    return f"http://{host}:{args.port}"


def _serve(
    args: argparse.Namespace, env: dict[str, str], make: Any, command: str, started: str
) -> int:
    """The local stack, then the stack's processes under the one supervisor, until a stop
    signal of any kind (see mm_orchestration.local.supervisor); everything stops on the way
    out. Refused up front, touching nothing, while another stack runs in the same folder."""
    from datetime import UTC, datetime

    from mm_orchestration.cli.arguments import refuse
    from mm_orchestration.local.embedded_pg import EmbeddedPostgresError, ServerInUse
    from mm_orchestration.local.supervisor import StopRequested, say, stop_signals

    about = {
        "command": command,
        "console": _console_url(args),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with stop_signals():
        try:
            with _local_stack(args, env, about) as stack_env:
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
        except StackRunning as exc:
            return refuse(str(exc), **exc.fields)
        except ServerInUse as exc:
            # Its owner is no stack (a shell, a script): named all the same, left alone.
            return refuse(
                f"{exc}, or start this one on another data folder (MM_DATA_DIR)", pid=exc.pid
            )
        except EmbeddedPostgresError as exc:
            # The embedded server would not start (ServerDidNotStart: the server's own
            # reason, the folder and what to do), or its wheel is missing: named, with
            # nothing left running.
            return refuse(str(exc), dataDir=str(Path(Settings.from_env(env).data_dir).resolve()))
        except StopRequested:
            return 0
