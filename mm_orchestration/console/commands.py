"""`mm-jobs console` and `mm-jobs serve-reports`: the job console, and the report download
endpoint for deployments without it."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from mm_orchestration.cli.arguments import database_url, local_settings, whole
from mm_orchestration.platform.settings import PORT_RANGE, Settings, SettingsError

PROJECT_WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"


def register(sub: Any) -> None:
    """Add `mm-jobs console` and `mm-jobs serve-reports`."""
    p = sub.add_parser(
        "console",
        help="the job console: Dagster's UI behind sign-in, roles and the audit log",
    )
    p.add_argument("--port", type=whole(*PORT_RANGE), default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "-w",
        "--workspace",
        type=Path,
        default=PROJECT_WORKSPACE,
        help="Dagster workspace file (default: the project's, which loads the code itself)",
    )
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("serve-reports", help="the compliance report download endpoint (production)")
    p.add_argument("--port", type=whole(*PORT_RANGE), default=3001)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_serve_reports)


def cmd_console(args: argparse.Namespace) -> int:
    """The job console alone (what the systemd unit, the image and the stacks run)."""
    from mm_orchestration.console.serve import serve

    local_settings()  # the local stack's database, when one is running
    return serve(args.workspace.resolve(), args.host, args.port)


def cmd_serve_reports(args: argparse.Namespace) -> int:
    """Serve stored reports to the compliance team without the console (HTTP Basic: user
    name `compliance`, password MM_REPORTS_PASSWORD). Behind the console, use its
    /reports/ instead: people sign in as themselves and each download is audited."""
    from mm_orchestration.console.downloads import make_server
    from mm_orchestration.platform.db import connect
    from mm_orchestration.platform.report_store import ReportStore

    settings = Settings.from_env()
    if not settings.reports_password:
        raise SettingsError("MM_REPORTS_PASSWORD is not set: downloads need a password")
    # Each download is looked up there: a database that cannot be used is named now, not
    # answered with a 500 for every report.
    connect(database_url(settings), setting="DATABASE_URL").close()
    server = make_server(
        ReportStore.from_settings(settings),
        database_url(settings),
        settings.reports_password,
        args.host,
        args.port,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"mm-jobs: report downloads on http://{args.host}:{args.port}/reports/...", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0
