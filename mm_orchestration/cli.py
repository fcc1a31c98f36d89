"""`mm-jobs`: migrate, seed demo data, run or list jobs, and start the local console.

An argument that is refused is named, with what is accepted, never quoted back: what
was typed may be a secret pasted into the wrong place, and terminals are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mm_orchestration.platform import inventory
from mm_orchestration.platform.settings import PORT_RANGE, Settings, SettingsError, ascii_integer
from mm_orchestration.platform.text import NOT_SHOWN, reason_without_value

PROJECT_WORKSPACE = Path(__file__).resolve().parent.parent / "workspace.yaml"

# Bounds of the whole-number arguments (read by settings.ascii_integer, like the settings).
ROW_ID_RANGE = (1, 2**63 - 1)  # a bigint id
LIMIT_RANGE = (1, 1_000_000)
SCALE_RANGE = (1, 10_000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, inventory.UnknownJobError) as exc:
        print(f"mm-jobs: {exc}", file=sys.stderr)
        return 2


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` in the digits 0-9, by the
    settings' own rule (argparse's int would take `١٠`, `+1` and `1_0`)."""

    def parse(value: str) -> int:
        try:
            return ascii_integer(value, low, high)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"the value {exc}; {NOT_SHOWN}") from None

    return parse


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """An argparse type for a fixed list (argparse's `choices` would quote what was typed)."""

    def parse(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"the value is not one of {', '.join(choices)}; {NOT_SHOWN}"
            )
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-jobs", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply the ops migrations (and the dev portal schema)")
    p.add_argument(
        "--with-portal-schema",
        action="store_true",
        help="also create the portal tables: local development and tests only",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("seed-demo", help="load realistic demo data into the portal tables")
    p.add_argument(
        "--scale", type=_whole(*SCALE_RANGE), default=1, help="multiply every count (benchmarks)"
    )
    p.set_defaults(func=cmd_seed_demo)

    p = sub.add_parser("run", help="run one job now, recorded in DAGSTER_HOME's instance")
    p.add_argument("job", help="seed name (share-link-expiry) or Dagster name")
    p.add_argument("--partition", help="partition key, for partitioned jobs")
    p.add_argument(
        "--actor", type=_actor, help="who is running it (for the audit log); default: you"
    )
    p.add_argument(
        "--window",
        type=_tick,
        help="the window to run, as the schedule names it (its tick, e.g. 2026-11-30T08:00:00Z):"
        " a window that already succeeded is skipped unless --force",
    )
    p.add_argument("--force", action="store_true", help="rerun a window that already succeeded")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="every job with its schedule, retries, SLA and next tick")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("grants", help="print (or --apply) the least-privilege grants for ROLE")
    p.add_argument("role")
    p.add_argument("--apply", action="store_true", help="run them against DATABASE_URL")
    p.set_defaults(func=cmd_grants)

    dlq = sub.add_parser("dlq", help="the Mux dead-letter queue: list, show, requeue, discard")
    dsub = dlq.add_subparsers(required=True, metavar="ACTION")
    p = dsub.add_parser("list", help="dead letters, newest first")
    statuses = ["pending", "replayed", "dead", "discarded"]
    p.add_argument("--status", type=_one_of(statuses), metavar="{" + ",".join(statuses) + "}")
    p.add_argument("--limit", type=_whole(*LIMIT_RANGE), default=100)
    p.set_defaults(func=cmd_dlq_list)
    p = dsub.add_parser("show", help="one dead letter: payload and error history")
    p.add_argument("id", type=_whole(*ROW_ID_RANGE))
    p.set_defaults(func=cmd_dlq_show)
    p = dsub.add_parser(
        "requeue",
        help="back to pending, attempts reset (audited); --all-dead skips discarded letters",
    )
    p.add_argument("ids", type=_whole(*ROW_ID_RANGE), nargs="*")
    p.add_argument("--all-dead", action="store_true", help="requeue every dead letter")
    p.add_argument("--actor", type=_actor, help="who is doing this; default: you")
    p.set_defaults(func=cmd_dlq_requeue)
    p = dsub.add_parser("discard", help="close a dead letter for good (audited)")
    p.add_argument("id", type=_whole(*ROW_ID_RANGE))
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", type=_actor, help="who is doing this; default: you")
    p.set_defaults(func=cmd_dlq_discard)

    outbox = sub.add_parser(
        "outbox", help="the email outbox: list failed emails, resend them after a fix"
    )
    osub = outbox.add_subparsers(required=True, metavar="ACTION")
    p = osub.add_parser(
        "list", help="failed and in-flight emails, newest first (keys and reasons, no address)"
    )
    p.add_argument(
        "--unknown",
        action="store_true",
        help="only those whose outcome is unknown, or still (or stale) in flight: look each "
        "key up in SendGrid's activity log",
    )
    kinds = sorted(inventory.KIND_SENDERS)
    kinds_shown = "{" + ",".join(kinds) + "}"
    p.add_argument("--kind", type=_one_of(kinds), metavar=kinds_shown, help="only this kind")
    p.add_argument("--limit", type=_whole(*LIMIT_RANGE), default=100)
    p.set_defaults(func=cmd_outbox_list)
    p = osub.add_parser(
        "resend",
        help="requeue failed emails of a kind (audited); each key still goes at most once",
    )
    p.add_argument(
        "--kind", required=True, type=_one_of(kinds), metavar=kinds_shown, help="which emails"
    )
    p.add_argument(
        "--since",
        required=True,
        type=_moment,
        help="failed at or after: YYYY-MM-DD or YYYY-MM-DDTHH:MM (MM_TIMEZONE unless given)",
    )
    p.add_argument(
        "--include-unknown",
        action="store_true",
        help="also those whose outcome is unknown (only after SendGrid's activity log shows "
        "they were not delivered)",
    )
    p.add_argument(
        "--to",
        type=_address,
        help="send them to this address instead (mail for our own contacts, after fixing "
        "RELIABILITY_EMAIL, COMPLIANCE_EMAIL or ADMIN_EMAIL)",
    )
    p.add_argument("--actor", type=_actor, help="who is doing this; default: you")
    p.set_defaults(func=cmd_outbox_resend)

    digest = sub.add_parser("digest", help="the notification digest: what one person would receive")
    gsub = digest.add_subparsers(required=True, metavar="ACTION")
    p = gsub.add_parser(
        "preview",
        help="what USER would receive now (the template data, as JSON); sends and records nothing",
    )
    p.add_argument("user", metavar="USER", help="a user id (UUID) or email address (any case)")
    p.add_argument(
        "--at",
        type=_instant,
        help="as at this instant, ISO 8601 with its offset (2026-11-30T08:00:00+11:00 or ...Z); "
        "default: now",
    )
    p.set_defaults(func=cmd_digest_preview)

    p = sub.add_parser(
        "console",
        help="the job console: Dagster's UI behind sign-in, roles and the audit log",
    )
    p.add_argument("--port", type=_whole(*PORT_RANGE), default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "-w",
        "--workspace",
        type=Path,
        default=PROJECT_WORKSPACE,
        help="Dagster workspace file (default: the project's, which loads the code itself)",
    )
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("dev", help="embedded PostgreSQL + the job console and daemon on :3000")
    p.add_argument("--port", type=_whole(*PORT_RANGE), default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--grpc-port", type=_whole(*PORT_RANGE), default=None, help="code server (default: free)"
    )
    p.add_argument("--no-demo", action="store_true", help="do not load demo data")
    # Reports are served by the console now; kept so that older scripts still start.
    p.add_argument("--reports-port", type=_whole(*PORT_RANGE), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("serve-reports", help="the compliance report download endpoint (production)")
    p.add_argument("--port", type=_whole(*PORT_RANGE), default=3001)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_serve_reports)

    p = sub.add_parser(
        "prod-local",
        help="the production topology here: gRPC code server, daemon, webserver (staging)",
    )
    p.add_argument("--port", type=_whole(*PORT_RANGE), default=3000, help="job console")
    p.add_argument("--grpc-port", type=_whole(*PORT_RANGE), default=4266, help="code server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--no-demo", action="store_true", help="do not load demo data")
    p.add_argument("--reports-port", type=_whole(*PORT_RANGE), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_prod_local)
    return parser


# -- migrate / seed ----------------------------------------------------------------


def _database_url(settings: Settings) -> str:
    url = settings.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise SettingsError(
            "DATABASE_URL is not set and no local stack is running (no embedded PostgreSQL "
            f"in {Path(settings.data_dir, 'postgres').resolve()}): start it with `make dev`, "
            "or export DATABASE_URL"
        )
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    from mm_orchestration.platform.db import connect
    from mm_orchestration.platform.migrate import migrate

    settings = _local_settings()
    # Migrations hold a session advisory lock: the direct host when there is one.
    url = settings.database_direct_url or _database_url(settings)
    with connect(url, autocommit=True) as conn:
        applied = migrate(conn, with_portal_schema=args.with_portal_schema)
    print("applied: " + ", ".join(applied) if applied else "up to date")
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from mm_orchestration.local.demo_data import seed_demo
    from mm_orchestration.platform.db import connect, require_tables

    settings = _local_settings()
    with connect(_database_url(settings)) as conn:
        require_tables(conn, ["portal.tenants", "portal.events", "portal.mux_webhook_dlq"])
        counts = seed_demo(conn, scale=args.scale)
    print(
        f"demo data: {counts.tenants} tenants, {counts.users} users, "
        f"{counts.share_links} share links, {counts.events} events"
    )
    return 0


# -- run / list --------------------------------------------------------------------


# Exit codes of `mm-jobs run`, so a script can tell the outcomes apart.
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED, EXIT_CANCELED = 0, 1, 2, 3, 4


def cmd_run(args: argparse.Namespace) -> int:
    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.monitoring.run_status import outcome
    from mm_orchestration.platform import manual_run
    from mm_orchestration.platform.instance import open_instance
    from mm_orchestration.platform.ledger import ACTOR_TAG, TRIGGER_TAG, WINDOW_TAG

    spec = inventory.get(args.job)
    settings = _local_settings()
    _database_url(settings)
    defs = build_definitions(settings)
    job = defs.resolve_job_def(spec.dagster_name)
    run_config: dict[str, Any] = {}
    if args.force:
        run_config = {"ops": {name: {"config": {"force": True}} for name in _force_nodes(job)}}
    tags = {ACTOR_TAG: args.actor or _os_user(), TRIGGER_TAG: "cli"}
    if args.window:
        tags[WINDOW_TAG] = args.window
    partition = args.partition
    if partition is not None:
        _check_partition(spec.name, job, partition)
    if partition is None and job.partitions_def is not None:
        partition = job.partitions_def.get_last_partition_key()  # the latest hour or day
        print(f"{spec.name}: partition {partition}")
    run_id = str(uuid.uuid4())
    with open_instance(settings) as instance:
        entry = _audit_cli_launch(settings, tags[ACTOR_TAG], spec.name, run_id, args, partition)
        try:
            manual_run.execute(
                job, instance, run_config, tags, partition, _database_url(settings), run_id=run_id
            )
            print(f"run id: {run_id}")
            ended = outcome(instance, run_id)
        except BaseException as exc:
            # A stop signal ends the entry in manual_run.cancel; anything else that ends
            # the command (an error, Ctrl-C before the run's own handlers) ends it here.
            with contextlib.suppress(Exception):  # the error itself matters more
                _settle_cli_launch(
                    settings, entry, "failed", run_id, f"mm-jobs run ended: {type(exc).__name__}"
                )
            raise
    _settle_cli_launch(settings, entry, ended.status, run_id, ended.summary)
    if ended.status == "succeeded":
        print(f"{spec.name}: succeeded")
        return EXIT_SUCCEEDED
    if ended.status == "skipped":
        print(f"{spec.name}: skipped: {ended.summary}")
        return EXIT_SKIPPED
    print(f"{spec.name}: {ended.status.upper()}: {ended.summary}", file=sys.stderr)
    return EXIT_CANCELED if ended.status == "canceled" else EXIT_FAILED


def _audit_cli_launch(
    settings: Settings,
    actor: str,
    job_name: str,
    run_id: str,
    args: argparse.Namespace,
    partition: str | None,
) -> int:
    """The launch's audit entry, written before the run starts (as the console does)."""
    from mm_orchestration.platform import audit
    from mm_orchestration.platform.db import connect

    with connect(_database_url(settings), autocommit=True) as conn:
        return audit.record(
            conn,
            actor,
            "launch_run",
            job_name,
            run_id,
            {
                "source": "cli",
                "os_user": _os_user(),
                "jobs": [inventory.get(job_name).dagster_name],
                "partitions": [{"dagster/partition": partition}] if partition else [],
                "variables": {"force": bool(args.force), "partition": partition},
                "via": "mm-jobs run",
            },
            target=job_name,
            outcome="allowed",
        )


def _settle_cli_launch(
    settings: Settings, entry: int, status: str, run_id: str, summary: str | None
) -> None:
    from mm_orchestration.platform import audit
    from mm_orchestration.platform.db import connect

    with connect(_database_url(settings), autocommit=True) as conn:
        audit.settle(conn, entry, status, run_id, {"summary": (summary or "")[:2000]})


def _check_partition(name: str, job: Any, partition: str) -> None:
    """--partition names a partition the job has, or the command stops saying so."""
    if job.partitions_def is None:
        raise SettingsError(f"--partition: {name} has no partitions; run it without one")
    if not job.partitions_def.has_partition_key(partition):
        latest = job.partitions_def.get_last_partition_key()
        raise SettingsError(
            f"--partition is not a partition of {name} (the latest is {latest}); {NOT_SHOWN}"
        )


def _force_nodes(job: Any) -> list[str]:
    names = []
    for node in job.graph.nodes:
        field = node.definition.config_field
        fields = getattr(field.config_type, "fields", {}) if field is not None else {}
        if "force" in fields:
            names.append(node.name)
    return names


def cmd_list(args: argparse.Namespace, now: datetime | None = None) -> int:
    """Every inventory job as the daemon will run it: the cron and time zone are read from
    the built schedule definitions, and the next tick comes from Dagster's iteration."""
    from dagster import ScheduleDefinition

    from mm_orchestration.definitions import ASSET_JOBS, JOBS, build_definitions
    from mm_orchestration.platform.scheduling import JOB_TAG

    settings = _local_settings()
    now = now or datetime.now(UTC)
    schedules = {
        s.tags.get(JOB_TAG): s
        for s in build_definitions(settings).schedules or []
        if isinstance(s, ScheduleDefinition)
    }
    rows = [("job", "schedule", "timezone", "retries", "sla", "next tick", "built")]
    for spec in inventory.INVENTORY:
        sched = schedules.get(spec.name)
        cron = sched.cron_schedule if sched else settings.cron_for(spec)
        zone = (sched.execution_timezone or "UTC") if sched else "-"  # the daemon's default
        rows.append(
            (
                spec.name,
                cron if isinstance(cron, str) else " | ".join(cron),
                zone,
                str(spec.retries),
                f"{spec.sla_seconds}s",
                _next_tick(cron, zone, now) if sched else "- (no schedule)",
                "yes" if spec.name in JOBS or spec.name in ASSET_JOBS else "not yet",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _next_tick(cron: str | Sequence[str], timezone: str, now: datetime) -> str:
    """The first tick after `now` that the daemon will run, by Dagster's own iteration."""
    from mm_orchestration.platform.cron import next_tick

    return next_tick(cron, timezone, now).strftime("%Y-%m-%d %H:%M %Z")


# -- grants ------------------------------------------------------------------------


def cmd_grants(args: argparse.Namespace) -> int:
    from mm_orchestration.platform.db import connect
    from mm_orchestration.platform.grants import statements

    with connect(_database_url(_local_settings()), autocommit=True) as conn:
        for statement in statements(args.role):
            text = statement.as_string(conn)
            print(f"{text};")
            if args.apply:
                conn.execute(statement)
    return 0


# -- dlq ---------------------------------------------------------------------------


def _dlq_conn() -> Any:
    from mm_orchestration.platform.db import connect

    return connect(_database_url(_local_settings()), autocommit=True)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from mm_orchestration.features.mux_dlq.operations import list_rows

    with _dlq_conn() as conn:
        rows = list_rows(conn, args.status, args.limit)
    for r in rows:
        kind = _printable(r["event_type"] or "?")
        print(
            f"{r['id']:>8}  {r['status']:<9}  attempts={r['attempts']}  {kind:<28}"
            f"  {_printable(r['event_id'])}  {_printable(r['last_error'] or '')}"
        )
    print(f"{len(rows)} row(s)")
    return 0


def _printable(text: object) -> str:
    """Stored text as one line of itself: a newline or an escape sequence inside an event id
    could otherwise forge listing lines or recolour the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def cmd_dlq_show(args: argparse.Namespace) -> int:
    import json

    from mm_orchestration.features.mux_dlq.operations import show_row

    with _dlq_conn() as conn:
        try:
            row = show_row(conn, args.id)
        except LookupError as exc:
            print(f"mm-jobs: {exc}", file=sys.stderr)
            return 1
    row.pop("signature", None)  # a credential-like header: not echoed
    print(json.dumps(row, indent=2, default=str))
    return 0


def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    from mm_orchestration.features.mux_dlq.operations import requeue

    if not args.ids and not args.all_dead:
        print("mm-jobs: give dead-letter ids, or --all-dead", file=sys.stderr)
        return 2
    actor = args.actor or _os_user()
    with _dlq_conn() as conn:
        try:
            done = requeue(conn, args.ids, actor, args.all_dead, os_user=_os_user())
        except LookupError as exc:
            _audit_dlq_failure(conn, actor, "dlq_requeue", args.ids, exc, all_dead=args.all_dead)
            print(f"mm-jobs: {exc}", file=sys.stderr)
            return 1
    print(f"requeued {len(done)}: {done}")
    return 0


def cmd_dlq_discard(args: argparse.Namespace) -> int:
    from mm_orchestration.features.mux_dlq.operations import discard

    actor = args.actor or _os_user()
    with _dlq_conn() as conn:
        try:
            discard(conn, args.id, args.reason, actor, os_user=_os_user())
        except (LookupError, ValueError) as exc:
            _audit_dlq_failure(conn, actor, "dlq_discard", [args.id], exc, reason=args.reason)
            print(f"mm-jobs: {exc}", file=sys.stderr)
            return 1
    print(f"discarded {args.id}")
    return 0


def _audit_dlq_failure(
    conn: Any, actor: str, action: str, ids: list[int], exc: Exception, **asked: Any
) -> None:
    """A DLQ command that changed nothing is audited too (`failed`, with why): an attempt
    on an unknown or already-closed letter is part of who did what."""
    from mm_orchestration.platform import audit

    audit.record(
        conn,
        actor,
        action,
        "mux-webhook-retry",
        None,
        {"ids": ids, **asked, "error": str(exc), "source": "cli", "os_user": _os_user()},
        target=",".join(map(str, ids)) or None,
        outcome="failed",
    )


# -- outbox ------------------------------------------------------------------------


MAX_ACTOR = 254  # an email address at most


def _actor(value: str) -> str:
    """`--actor`: a person's name as the audit log shows it: one line of visible text (a
    newline or a control character could forge a line of a listing or the CSV), at most
    an email address long."""
    name = value.strip()
    if not name or len(name) > MAX_ACTOR or not name.isprintable():
        raise argparse.ArgumentTypeError(
            f"must be a person's name or email address: visible characters only, at most "
            f"{MAX_ACTOR} (got {len(value)} character(s))"
        )
    return name


def _os_user() -> str:
    """Who really ran the command (recorded beside --actor, which anyone may type)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _address(value: str) -> str:
    """`--to`: one address SendGrid will take (the outbox's own rule)."""
    from mm_orchestration.platform.outbox.addresses import address_problem, sendable_address

    problem = address_problem(value)
    if problem:
        # email-validator's reason may quote the address: kept only when it quotes none.
        reason = reason_without_value(problem, value, "it is not one email address").rstrip(".")
        raise argparse.ArgumentTypeError(f"the value is not an address: {reason}; {NOT_SHOWN}")
    return sendable_address(value)


def _tick(value: str) -> str:
    """`--window`: a schedule tick as the ledger names its window (UTC, to the second)."""
    from mm_orchestration.platform.scheduling import tick_of, window_key

    try:
        tick = tick_of(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the value is not a schedule tick (UTC, like 2026-11-30T08:00:00Z); {NOT_SHOWN}"
        ) from None
    return window_key(tick)


_MOMENT = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?",
    re.ASCII,
)


def _moment(value: str) -> datetime:
    """`--since`: a date (midnight) or a date and time, in MM_TIMEZONE unless it says."""
    from zoneinfo import ZoneInfo

    try:
        # Only the two forms the help names: fromisoformat alone also takes ISO weeks
        # (2026-W48) and compact forms (20261130), which an operator never means here.
        if not _MOMENT.fullmatch(value.strip()):
            raise ValueError(value)
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the value is not a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM); {NOT_SHOWN}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(Settings.from_env().timezone))
    return moment


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from mm_orchestration.platform.outbox import list_failed

    with _dlq_conn() as conn:
        rows = list_failed(conn, args.unknown, args.kind, args.limit)
    for r in rows:
        when = r["at"].isoformat(timespec="seconds") if r["at"] else "-"
        print(
            f"{_printable(r['idempotency_key'])}  {r['state']:<7}  {r['kind']}  {when}"
            f"  run={r['failed_run_id'] or r['claimed_by'] or '-'}"
            f"  {_printable(r['last_error'] or '')}"
        )
    print(f"{len(rows)} row(s)")
    stale = sum(r["state"] == "stale" for r in rows)
    if stale:
        print(
            f"{stale} stale: their deliverer stopped mid-send; the next run of the job that "
            "sends them reports them as outcome unknown (look each key up in SendGrid)"
        )
    return 0


def cmd_outbox_resend(args: argparse.Namespace) -> int:
    from mm_orchestration.platform.outbox import KIND_SENDERS, resend

    actor = args.actor or _os_user()
    with _dlq_conn() as conn:
        keys = resend(conn, args.kind, args.since, actor, args.include_unknown, args.to)
    for key in keys:
        print(_printable(key))
    sender = KIND_SENDERS.get(args.kind, "the job that sends them")
    print(
        f"requeued {len(keys)} {args.kind} email(s) failed since {args.since.isoformat()}; "
        f"they go with the next run of {sender}"
        + (
            f" (now: mm-jobs run {sender})"
            if sender in {s.name for s in inventory.INVENTORY}
            else ""
        )
    )
    return 0


# -- digest ------------------------------------------------------------------------


def _instant(value: str) -> datetime:
    """`--at`: an instant with its offset (a wall time alone would be a guess at the zone)."""
    from mm_orchestration.platform.scheduling import parse_instant

    try:
        instant = parse_instant(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "the value is not an instant with its offset (2026-11-30T08:00:00+11:00 or "
            f"2026-11-29T21:00:00Z); {NOT_SHOWN}"
        ) from None
    # A digest's window reaches a week back and a day ahead: the years at either end of
    # the calendar would overflow it (and no one's digest is there).
    if not datetime(1970, 1, 1, tzinfo=UTC) <= instant <= datetime(9000, 1, 1, tzinfo=UTC):
        raise argparse.ArgumentTypeError(f"the value is out of range (1970 to 9000); {NOT_SHOWN}")
    return instant


# Who USER names, and each reason the digest would leave them out (the job's own rule:
# digest_queue.ELIGIBLE and frequency 'off').
PERSON = """
SELECT u.id, array_remove(ARRAY[
           CASE WHEN NOT u.digest_opt_in THEN 'opted out (digest_opt_in is false)' END,
           CASE WHEN u.digest_frequency::text = 'off' THEN 'digest frequency is off' END,
           CASE WHEN u.deactivated_at IS NOT NULL
                THEN 'deactivated at ' || to_char(u.deactivated_at AT TIME ZONE 'UTC',
                                                  'YYYY-MM-DD HH24:MI"Z"') END,
           CASE WHEN t.status IS DISTINCT FROM 'active'
                THEN 'their agency is ' || coalesce(t.status, 'missing') END], NULL)
  FROM portal.users u
  LEFT JOIN portal.tenants t ON t.id = u.tenant_id
 WHERE CASE WHEN %(id)s::uuid IS NOT NULL THEN u.id = %(id)s::uuid
            ELSE lower(btrim(u.email)) = lower(btrim(%(email)s)) END
 ORDER BY u.id
"""


def cmd_digest_preview(args: argparse.Namespace) -> int:
    """Print what one person's digest would say at --at (default now), for support and the
    portal team, without queueing, sending or recording anything."""
    from mm_orchestration.features.digests.queue import preview

    settings = _local_settings()
    # USER is quoted back only once it is one of the portal's users (their address as
    # stored), or a well-formed UUID: what else was typed may be anything.
    shown = _printable(args.user.strip())
    if not args.user.isprintable():
        print(f"mm-jobs: USER holds control characters; give a user id or an address; "
              f"{NOT_SHOWN}", file=sys.stderr)  # fmt: skip
        return 2
    try:
        person_id: uuid.UUID | None = uuid.UUID(args.user.strip())
    except ValueError:
        person_id = None
        if "@" not in args.user:
            print(f"mm-jobs: USER is neither a user id (UUID) nor an email address; "
                  f"{NOT_SHOWN}", file=sys.stderr)  # fmt: skip
            return 2
    at = args.at or datetime.now(UTC)
    with _dlq_conn() as conn, conn.transaction():
        # Read only, so that nothing the preview runs can write, whatever it becomes.
        conn.execute("SET TRANSACTION READ ONLY")
        people = conn.execute(PERSON, {"id": person_id, "email": args.user}).fetchall()
        if not people:
            asked = str(person_id) if person_id else "with that address"
            print(f"mm-jobs: no user {asked}", file=sys.stderr)
            return 1
        if len(people) > 1:
            ids = ", ".join(str(row[0]) for row in people)
            print(
                f"mm-jobs: {len(people)} users have the address {shown} (one per agency): "
                f"{ids}; give the user id",
                file=sys.stderr,
            )
            return 1
        (user_id, reasons) = people[0]
        result = None if reasons else preview(conn, user_id, at, settings.timezone)
    if result is None:
        why = "; ".join(reasons) or "not eligible now"
        print(f"mm-jobs: user {user_id} gets no digest: {why}", file=sys.stderr)
        return 1
    print(
        _json_lines(
            {
                "user_id": result["user_id"],
                "at": at.isoformat(),
                "zone": result["zone"],
                "frequency": result["frequency"],
                "period": result["period"],
                "moment": result["moment"],
                "moment_note": _moment_note(result),
                "settled": result["settled"],
                "suppressed": result["suppressed"],
                "data": result["data"],
            }
        )
    )
    return 0


def _moment_note(result: dict[str, Any]) -> str:
    """What happened to this period's digest moment, in words (a gap, an overlap, a miss)."""
    from mm_orchestration.features.digests.moments import MERGED, MOVED

    settled = result["settled"]
    if settled and settled["outcome"] == "missed":
        return "missed: its moment passed more than the grace ago (recorded, never sent stale)"
    if result["moment"] is None:
        return "no digest moment in this period (not one of their days)"
    return {
        MOVED: "moved: their time does not exist that day (clocks went forward); due at the "
        "transition",
        MERGED: "merged: their time happens twice that day (clocks went back); due at the first",
    }.get(result["shift"], "on time")


def _json_lines(value: Any) -> str:
    """Indented JSON with stored text readable (names in any script) but every character a
    terminal would act on escaped, as JSON escapes it (\u001b, \u2028)."""
    import json

    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    # json escapes C0 controls already; what is left (C1 controls, line separators, bidi
    # overrides) only occurs inside strings, where an escape means the same character.
    return "".join(ch if ch == "\n" or ch.isprintable() else json.dumps(ch)[1:-1] for ch in text)


# -- dev ---------------------------------------------------------------------------


def _local_settings() -> Settings:
    """Settings, with the embedded server's URL filled in when it is running locally.

    Only the portal's URL is filled in: Dagster's storage always comes from DAGSTER_HOME's
    dagster.yaml (mm_orchestration.platform.instance), never from DATABASE_URL.
    """
    if not os.environ.get("DATABASE_URL"):
        settings = Settings.from_env()
        port_file = Path(settings.data_dir, "postgres", "port")
        if (
            port_file.exists()
            and Path(settings.data_dir, "postgres", "data", "postmaster.pid").exists()
        ):
            port = port_file.read_text().strip()
            os.environ["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{port}/portal"
    return Settings.from_env()


@contextlib.contextmanager
def _local_stack(args: argparse.Namespace) -> Iterator[Settings]:
    """What `dev` and `prod-local` share: PostgreSQL (embedded unless DATABASE_URL is
    set) with migrations and demo data, and DAGSTER_HOME. Reports download from the
    console itself."""
    from psycopg import sql

    from mm_orchestration.local.demo_data import seed_demo
    from mm_orchestration.local.embedded_pg import EmbeddedPostgres
    from mm_orchestration.local.supervisor import say
    from mm_orchestration.platform.db import connect
    from mm_orchestration.platform.instance import home_dir, open_instance, write_home
    from mm_orchestration.platform.migrate import migrate

    data_dir = Path(Settings.from_env().data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Absolute for every process started from here: the Dagster ones run in DAGSTER_HOME.
    os.environ["MM_DATA_DIR"] = str(data_dir)
    settings = Settings.from_env()
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
            os.environ["DATABASE_URL"] = server.url("portal")
        database_url = os.environ["DATABASE_URL"]
        with connect(database_url, autocommit=True) as conn:
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
        home = write_home(
            home_dir(Settings.from_env()), server.url("dagster") if server is not None else None
        )
        os.environ["DAGSTER_HOME"] = str(home)
        open_instance(Settings.from_env()).dispose()  # refuses a storage in the portal DB
        yield Settings.from_env()
    finally:
        if server is not None:
            server.stop()
            say("embedded PostgreSQL stopped")


def cmd_console(args: argparse.Namespace) -> int:
    """The job console alone (what the systemd unit, the image and the stacks run)."""
    from mm_orchestration.console.serve import serve

    _local_settings()  # the local stack's database, when one is running
    return serve(args.workspace.resolve(), args.host, args.port)


def _console_defaults(args: argparse.Namespace) -> None:
    """The local stacks' console: the local OS user (labelled as such) unless the identity
    proxy is configured, and report links to the console itself."""
    from mm_orchestration.console.access import ConsoleAccess
    from mm_orchestration.console.serve import loopback_address

    # A loopback address however spelled (127.1, [::1]) as the address itself: the
    # processes bind it and the report links must be a URL the settings accept.
    address = loopback_address(args.host)
    if address is not None and args.host.strip() != "localhost":
        args.host = str(address)
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    os.environ.setdefault("MM_CONSOLE_AUTH", "local")
    os.environ.setdefault("MM_REPORTS_URL", f"http://{url_host}:{args.port}")

    ConsoleAccess.from_env()  # a bad console setting stops the start, naming it


def cmd_dev(args: argparse.Namespace) -> int:
    """The console, the daemon and a reloading code server on the local stack."""
    from mm_orchestration.local.embedded_pg import free_port
    from mm_orchestration.local.topology import DevConsole

    _console_defaults(args)
    grpc_port = args.grpc_port or free_port()

    def console(env: dict[str, str]) -> DevConsole:
        home = Path(env["DAGSTER_HOME"])
        return DevConsole(
            dagster_home=home, env=env, host=args.host, grpc_port=grpc_port, web_port=args.port
        )

    return _serve(args, console, f"job console on http://{args.host}:{args.port}")


def cmd_prod_local(args: argparse.Namespace) -> int:
    """The production topology on this machine: code server, daemon and webserver as
    three supervised processes, MM_ENV=staging unless set."""
    from mm_orchestration.local.topology import Topology

    os.environ.setdefault("MM_ENV", "staging")
    _console_defaults(args)

    def topology(env: dict[str, str]) -> Topology:
        home = Path(env["DAGSTER_HOME"])
        return Topology(
            dagster_home=home, env=env, host=args.host, grpc_port=args.grpc_port, web_port=args.port
        )

    return _serve(
        args,
        topology,
        f"code server on {args.host}:{args.grpc_port} (gRPC), daemon, job console on "
        f"http://{args.host}:{args.port} (MM_ENV={os.environ['MM_ENV']})",
    )


def _serve(args: argparse.Namespace, make: Any, started: str) -> int:
    """The local stack, then the stack's processes under the one supervisor, until a stop
    signal of any kind (see mm_orchestration.local.supervisor); everything stops on the way out."""
    from mm_orchestration.local.supervisor import StopRequested, say, stop_signals

    with stop_signals():
        try:
            with _local_stack(args):
                stack = make(dict(os.environ))
                try:
                    stack.start_all()
                except RuntimeError as exc:
                    stack.stop_all()
                    print(f"mm-jobs: {exc}", file=sys.stderr)
                    return 1
                except StopRequested:
                    stack.stop_all()
                    return 0
                say(f"{started}  (Ctrl-C stops everything)")
                return int(stack.supervise())
        except StopRequested:
            return 0


def cmd_serve_reports(args: argparse.Namespace) -> int:
    """Serve stored reports to the compliance team without the console (HTTP Basic: user
    name `compliance`, password MM_REPORTS_PASSWORD). Behind the console, use its
    /reports/ instead: people sign in as themselves and each download is audited."""
    from mm_orchestration.console.downloads import make_server
    from mm_orchestration.platform.report_store import ReportStore

    settings = Settings.from_env()
    if not settings.reports_password:
        raise SettingsError("MM_REPORTS_PASSWORD is not set: downloads need a password")
    server = make_server(
        ReportStore.from_settings(settings),
        _database_url(settings),
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


if __name__ == "__main__":
    sys.exit(main())
