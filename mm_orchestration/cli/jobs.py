"""`mm-jobs` commands for the jobs as a whole: migrate, seed demo data, run one job, list
them all, and print the database grants."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mm_orchestration.cli.arguments import (
    SCALE_RANGE,
    actor,
    connection,
    database_url,
    local_settings,
    os_user,
    tick,
    whole,
)
from mm_orchestration.platform import inventory
from mm_orchestration.platform.settings import Settings, SettingsError


def register(sub: Any) -> None:
    """Add this module's commands to `mm-jobs`."""
    p = sub.add_parser("migrate", help="apply the ops migrations (and the dev portal schema)")
    p.add_argument(
        "--with-portal-schema",
        action="store_true",
        help="also create the portal tables: local development and tests only",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("seed-demo", help="load realistic demo data into the portal tables")
    p.add_argument(
        "--scale", type=whole(*SCALE_RANGE), default=1, help="multiply every count (benchmarks)"
    )
    p.set_defaults(func=cmd_seed_demo)

    p = sub.add_parser("run", help="run one job now, recorded in DAGSTER_HOME's instance")
    p.add_argument("job", help="seed name (share-link-expiry) or Dagster name")
    p.add_argument("--partition", help="partition key, for partitioned jobs")
    p.add_argument(
        "--actor", type=actor, help="who is running it (for the audit log); default: you"
    )
    p.add_argument(
        "--window",
        type=tick,
        help="the window to run, as the schedule names it (its tick, e.g. 2026-11-30T08:00:00Z):"
        " a window that already succeeded is skipped unless --force",
    )
    p.add_argument("--force", action="store_true", help="rerun a window that already succeeded")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "list", help="every job with its schedule, retries, SLA, next tick and error-rate alert"
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("grants", help="print (or --apply) the least-privilege grants for ROLE")
    p.add_argument("role")
    p.add_argument("--apply", action="store_true", help="run them against DATABASE_URL")
    p.set_defaults(func=cmd_grants)


def cmd_migrate(args: argparse.Namespace) -> int:
    from mm_orchestration.platform.migrate import migrate

    # Migrations hold a session advisory lock: the direct host when there is one.
    with connection(direct=True) as conn:
        applied = migrate(conn, with_portal_schema=args.with_portal_schema)
    print("applied: " + ", ".join(applied) if applied else "up to date")
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from mm_orchestration.local.demo_data import seed_demo
    from mm_orchestration.platform.db import require_tables

    with connection(autocommit=False) as conn:
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
    from mm_orchestration.monitoring.process_log import configure_process

    # stderr is JSON lines, the run's log and anything else, before the definitions (and
    # Dagster with them) are imported: what they log or warn on import is a line too.
    configure_process()
    spec = inventory.get(args.job)
    settings = local_settings()
    database_url(settings)
    # The portal database answers before Dagster and the definitions are imported (two
    # seconds): a refusal is said at once.
    connection(settings).close()
    from mm_orchestration.definitions import build_definitions, build_job_alone
    from mm_orchestration.monitoring import joblog
    from mm_orchestration.monitoring.run_status import outcome
    from mm_orchestration.platform import manual_run
    from mm_orchestration.platform.instance import open_instance
    from mm_orchestration.platform.ledger import ACTOR_TAG, TRIGGER_TAG, WINDOW_TAG

    # An operational job from its own folder, as a run worker builds it; an asset job
    # from the whole location (its asset graph spans folders).
    job = build_job_alone(settings, spec.dagster_name) or build_definitions(
        settings
    ).resolve_job_def(spec.dagster_name)
    run_config: dict[str, Any] = {}
    if args.force:
        run_config = {"ops": {name: {"config": {"force": True}} for name in _force_nodes(job)}}
    tags = {ACTOR_TAG: args.actor or os_user(), TRIGGER_TAG: "cli"}
    if args.window:
        tags[WINDOW_TAG] = args.window
    partition = args.partition
    if partition is not None:
        _check_partition(spec.name, job, partition)
    if partition is None and job.partitions_def is not None:
        # Without --partition, the latest hour, day or week, said on stdout (docs/cli.md).
        partition = job.partitions_def.get_last_partition_key()
        if partition is None:  # a partitioning that has not begun: nothing to run yet
            _check_partition(spec.name, job, None)
        print(f"{spec.name}: partition {partition}")
    run_id = str(uuid.uuid4())
    _check_databases(settings, job)
    with open_instance(settings) as instance:  # Dagster's storage, checked the same way
        entry = _audit_cli_launch(settings, tags[ACTOR_TAG], spec.name, run_id, args, partition)
        try:
            manual_run.execute(
                job, instance, run_config, tags, partition, database_url(settings),
                run_id=run_id, on_stop=lambda why: _print_stopped(spec.name, run_id, why),
            )  # fmt: skip
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
    # FAILED or CANCELED: the answer on stdout, and a line of the log on stderr.
    answer = f"{spec.name}: {ended.status.upper()}: {ended.summary}"
    print(answer, flush=True)
    canceled = ended.status == "canceled"
    joblog.log_event(
        answer,
        level=logging.WARNING if canceled else logging.ERROR,
        jobName=spec.name,
        runId=run_id,
        status=ended.status,
    )
    return EXIT_CANCELED if canceled else EXIT_FAILED


def _print_stopped(name: str, run_id: str, why: str) -> None:
    """The answer of a run stopped by Ctrl-C, SIGTERM or SIGHUP, as every outcome prints
    it (docs/cli.md)."""
    print(f"run id: {run_id}")
    print(f"{name}: CANCELED: {why}", flush=True)


def _check_databases(settings: Settings, job: Any) -> None:
    """Before the run starts, each database the job will use answers and takes our
    credentials, or the command refuses naming the setting (exit 2): DATABASE_DIRECT_URL
    (the ledger's session lock, pg_dump), whose failure inside the run would be retried,
    end FAILED and alert the job's owner. DATABASE_URL (the audit entry's and the job's)
    was checked first of all, Dagster's storage (DAGSTER_DATABASE_URL) is checked by
    open_instance."""
    if settings.database_direct_url and "portal_db" in job.required_resource_keys:
        connection(settings, direct=True).close()


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

    with connection(settings) as conn:
        return audit.record(
            conn,
            actor,
            "launch_run",
            job_name,
            run_id,
            {
                "source": "cli",
                "os_user": os_user(),
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

    with connection(settings) as conn:
        audit.settle(conn, entry, status, run_id, {"summary": (summary or "")[:2000]})


def _check_partition(name: str, job: Any, partition: str | None) -> None:
    """--partition names a partition the job has, or the command stops saying so and which
    are valid, by the rule every door judges by (platform/partitions.py)."""
    from mm_orchestration.platform.partitions import key_problem

    problem = key_problem(name, job.partitions_def, partition)
    if problem:
        raise SettingsError(f"--partition: {problem}")


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

    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.platform.scheduling import JOB_TAG

    settings = local_settings()
    now = now or datetime.now(UTC)
    defs = build_definitions(settings)
    built = {job.name for job in defs.jobs or []}
    schedules = {
        s.tags.get(JOB_TAG): s for s in defs.schedules or [] if isinstance(s, ScheduleDefinition)
    }
    rows = [
        ("job", "schedule", "timezone", "retries", "sla", "next tick", "built", "error-rate alert")
    ]
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
                "yes" if spec.dagster_name in built else "not yet",
                # The threshold error_rate_sensor (and Sentry, with a token) alerts on.
                str(spec.error_rate) if spec.error_rate else "its own rules",
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
    from mm_orchestration.platform.grants import OWNS_OPS, statements

    with connection() as conn:
        row = conn.execute(OWNS_OPS, [args.role]).fetchone()
        owns_ops = bool(row and row[0])
        if owns_ops:
            print(
                f"-- {args.role} owns ops: its privileges there are left as they are (the "
                "audit trail is protected by its trigger only; docs/audit.md)",
                file=sys.stderr,
            )
        for statement in statements(args.role, owns_ops):
            text = statement.as_string(conn)
            print(f"{text};")
            if args.apply:
                conn.execute(statement)
    return 0
