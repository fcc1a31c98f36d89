"""backup-verify: on the first Australian business day of each month, prove a restore works.

The local drill pipes `pg_dump` of the portal database, taken inside an exported
snapshot, into `pg_restore` of a scratch database (both of the server's own major
version: MM_PG_BIN_DIR, Debian's postgresql-client-N, or the bundled ones; none
matching fails at once, naming the package to install), and compares the copy with
that same snapshot: row counts of every table in `portal` and `ops`, a checksum of
the key tables, the migration version, and a smoke query on each key table. It
records the evidence in `ops.backup_drills` (restore time as RTO, the newest row's
age as RPO, when the next drill is due: due.py) and drops the scratch database whatever
happened. A failed drill fails the run, naming the compliance contact, and blocks the
next residency sign-off.

"First business day" skips weekends and national and NSW public holidays.
"""

import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from dagster import Failure, OpExecutionContext, op
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from pydantic import Field

from mm_orchestration.features.restore_drill import due
from mm_orchestration.features.restore_drill.neon import NeonClient, NeonError
from mm_orchestration.features.restore_drill.resource import (
    PgToolsNotFound,
    RestoreDrill,
    server_version,
)
from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import inventory
from mm_orchestration.platform.config_models import OpConfig
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.ledger import ledgered
from mm_orchestration.platform.migrate import current_version
from mm_orchestration.platform.processes import ToolFailed
from mm_orchestration.platform.scheduling import inventory_job
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE
from mm_orchestration.platform.text import NOT_SHOWN

SPEC = inventory.get("backup-verify")
# The tables the job needs; a missing one stops it before any work, named.
TABLES = ("ops.backup_drills", "ops.schema_migrations")
KEY_TABLES = (
    "portal.tenants",
    "portal.users",
    "portal.projects",
    "portal.media_assets",
    "portal.share_links",
    "portal.invitations",
)
TIMESTAMPED = (
    ("portal.events", "occurred_at"),
    ("portal.media_assets", "updated_at"),
    ("portal.tenants", "created_at"),
)


def is_business_day(day: date) -> bool:
    """A weekday that is not a national or NSW public holiday."""
    import holidays  # only the drill's runs need the calendar

    return day.weekday() < 5 and day not in holidays.country_holidays(
        "AU", subdiv="NSW", years=day.year
    )


def first_business_day(year: int, month: int) -> date:
    day = date(year, month, 1)
    while not is_business_day(day):
        day += timedelta(days=1)
    return day


def skip_unless_first_business_day(tick: datetime) -> str | None:
    local = tick.astimezone(ZoneInfo(BUSINESS_TIMEZONE)).date()
    first = first_business_day(local.year, local.month)
    if local != first:
        return f"{local} is not the first business day of the month ({first} is)"
    return None


class DrillFailed(Exception):
    """The drill did not prove a faithful copy: a named check failed (the copy is not the
    database it came from), or a tool of the restore did (the message names it)."""

    def __init__(self, message: str, evidence: dict[str, Any]) -> None:
        super().__init__(message)
        self.evidence = evidence


def _tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        """SELECT schemaname || '.' || tablename FROM pg_tables
            WHERE schemaname IN ('portal', 'ops') ORDER BY 1"""
    ).fetchall()
    return [r[0] for r in rows]


def _ident(name: str) -> sql.Composable:
    schema, table = name.split(".")
    return sql.Identifier(schema, table)


def fingerprint(conn: psycopg.Connection) -> dict[str, Any]:
    """What a faithful copy must reproduce: counts, key-table checksums, migration version."""
    tables = _tables(conn)
    counts = {}
    for table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(table))).fetchone()
        counts[table] = int(row[0]) if row else 0
    checksums = {}
    for table in KEY_TABLES:
        if table in counts:
            row = conn.execute(
                sql.SQL(
                    "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {} t"
                ).format(_ident(table))
            ).fetchone()
            checksums[table] = row[0] if row else ""
    return {"counts": counts, "checksums": checksums, "migration": current_version(conn)}


def _with_db(url: str, name: str) -> str:
    """The same server, user and options, database `name`: libpq's reading of any form
    (a URL with `?dbname=` in its query, key=value), never a path swapped by hand."""
    return make_conninfo(url, dbname=name)


def run_local_drill(
    source_url: str,
    drill: RestoreDrill,
    after_restore: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Dump, restore into a scratch database, compare. Returns the evidence; raises DrillFailed.

    `after_restore(scratch_url)` lets a test make the copy differ on purpose.
    """
    scratch = f"mm_drill_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
    scratch_url = _with_db(source_url, scratch)
    evidence: dict[str, Any] = {"scratch_database": scratch}
    with connect(source_url) as snap:
        version = snap.execute("SHOW server_version_num").fetchone()
        snap.rollback()
        assert version is not None
        # Before anything else: with no tools of the server's version, fail at once.
        tools = drill.tools_for(int(version[0]))
        evidence["server_version"] = server_version(int(version[0]))
        evidence["client_tools"] = tools.evidence()
        # One snapshot for the dump and for what the copy is compared against.
        snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = snap.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        expected = fingerprint(snap)
        with connect(source_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        try:
            started = time.monotonic()
            # Piped: the scratch copy is restored while the dump is still being written.
            try:
                drill.pipe(
                    tools,
                    [
                        "--format=custom",
                        f"--snapshot={row[0]}",
                        "--no-owner",
                        "--no-privileges",
                        f"--dbname={source_url}",
                    ],
                    ["--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={scratch_url}"],
                )
            except ToolFailed as exc:
                raise DrillFailed(str(exc), evidence) from exc
            snap.rollback()
            evidence["rto_seconds"] = round(time.monotonic() - started, 3)
            evidence.update(_inspect_copy(expected, scratch_url, after_restore))
        finally:
            with connect(source_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(scratch)
                    )
                )
    _raise_if_failed(evidence)
    return evidence


def run_neon_drill(
    source_url: str,
    drill: RestoreDrill,
    after_restore: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Branch the Neon project at the moment of a snapshot of the source, compare, delete."""
    if not (drill.neon_api_key and drill.neon_project_id):
        raise DrillFailed("the neon method needs NEON_API_KEY and NEON_PROJECT_ID", {})
    client = NeonClient(
        drill.neon_api_key, drill.neon_project_id, drill.neon_api_host, drill.http_timeouts
    )
    with connect(source_url) as snap:
        snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = snap.execute("SELECT now()").fetchone()
        assert row is not None
        at = row[0]
        expected = fingerprint(snap)
        snap.rollback()
    name = f"mm-drill-{datetime.now(UTC):%Y%m%d%H%M%S}"
    started = time.monotonic()
    branch = client.create_branch(name, at)
    evidence: dict[str, Any] = {"neon_branch": branch.id, "parent_timestamp": at.isoformat()}
    try:
        client.wait(branch.operation_ids, drill.neon_poll_seconds)
        evidence["rto_seconds"] = round(time.monotonic() - started, 3)
        evidence.update(_inspect_copy(expected, branch.connection_uri, after_restore))
    finally:
        client.delete_branch(branch.id)
    _raise_if_failed(evidence)
    return evidence


def _inspect_copy(
    expected: dict[str, Any], copy_url: str, after_restore: Callable[[str], None] | None
) -> dict[str, Any]:
    """Compare a restored copy with the source's fingerprint; smoke-test it; measure RPO."""
    if after_restore is not None:
        after_restore(copy_url)
    with connect(copy_url) as copy:
        actual = fingerprint(copy)
        smoke = {}
        for table in KEY_TABLES:
            copy.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(_ident(table)))
            smoke[table] = "ok"
        newest = None
        for table, column in TIMESTAMPED:
            row = copy.execute(
                sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), _ident(table))
            ).fetchone()
            if row and row[0] and (newest is None or row[0] > newest):
                newest = row[0]
    return {
        "rpo_seconds": round((datetime.now(UTC) - newest).total_seconds(), 1) if newest else None,
        "newest_row_at": newest.isoformat() if newest else None,
        "checks": _compare(expected, actual) | {"smoke_queries": smoke},
    }


def _raise_if_failed(evidence: dict[str, Any]) -> None:
    failed = [
        name
        for name, result in evidence["checks"].items()
        if isinstance(result, dict) and result.get("passed") is False
    ]
    if failed:
        raise DrillFailed(
            f"restore drill check(s) failed: {', '.join(failed)}: "
            + "; ".join(evidence["checks"][name]["detail"] for name in failed),
            evidence,
        )


def _compare(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    counts_off = {
        t: (n, actual["counts"].get(t))
        for t, n in expected["counts"].items()
        if actual["counts"].get(t) != n
    }
    sums_off = [t for t, s in expected["checksums"].items() if actual["checksums"].get(t) != s]
    return {
        "row_counts": {
            "passed": not counts_off,
            "tables": len(expected["counts"]),
            "detail": ", ".join(
                f"{t}: {a} in the copy, {e} in the source" for t, (e, a) in counts_off.items()
            )
            or "all equal",
        },
        "key_table_checksums": {
            "passed": not sums_off,
            "detail": ("differ for " + ", ".join(sums_off)) if sums_off else "all equal",
        },
        "migration_version": {
            "passed": expected["migration"] == actual["migration"],
            "detail": f"source {expected['migration']}, copy {actual['migration']}",
        },
    }


DRILLS = {"local": run_local_drill, "neon": run_neon_drill}


class DrillConfig(OpConfig):
    # A Literal: the console refuses anything else before the run starts, naming the values.
    method: Literal["", "local", "neon"] = Field(
        default="", description="local or neon; blank: the configured method"
    )


@op(tags={"kind": "postgres"})
def run_restore_drill(
    context: OpExecutionContext,
    config: DrillConfig,
    portal_db: PortalDatabase,
    restore_drill: RestoreDrill,
    job_settings: JobSettings,
) -> None:
    """Restore the portal database somewhere else and prove the copy is faithful."""
    method = config.method or restore_drill.method
    if method not in DRILLS:
        raise Failure(
            "the restore drill method (MM_DRILL_METHOD, or the run's method) is neither "
            f"local nor neon; {NOT_SHOWN} (compliance contact: {job_settings.compliance_email})",
            allow_retries=False,
        )
    started = datetime.now(UTC)
    with ledgered(context, portal_db, SPEC.name, TABLES) as run:
        if run.skipped:
            return
        try:
            evidence = DRILLS[method](portal_db.session_url, restore_drill, None)
            status, error = "succeeded", None
        except (DrillFailed, PgToolsNotFound) as exc:
            evidence, status, error = exc.evidence, "failed", str(exc)
        except (psycopg.Error, OSError, NeonError) as exc:
            evidence, status, error = {}, "failed", f"{type(exc).__name__}: {exc}"
        with portal_db.connection() as conn:  # the record says when the next is due
            recorded = conn.execute(
                due.RECORD_DRILL,
                {"started": started, "status": status, "method": method,
                 "checks": Jsonb(evidence), "error": error, "every": due.DRILL_EVERY},
            ).fetchone()  # fmt: skip
        next_due = recorded[1] if recorded else None
        run.details = {"status": status}
        log_event(
            "drill.finished",
            jobName=SPEC.name,
            runId=context.run_id,
            status=status,
            rtoSeconds=evidence.get("rto_seconds"),
            error=error,
        )
        if error:
            raise Failure(
                f"{error}. Compliance sign-off is blocked until a drill succeeds; "
                f"the compliance contact ({job_settings.compliance_email}) must review.",
                metadata={"evidence": str(evidence)[:2000]},
                allow_retries=False,
            )
    metadata: dict[str, Any] = {
        "next_drill_due": next_due.isoformat() if next_due else "now",
        "rto_seconds": float(evidence.get("rto_seconds") or 0),
        "rpo_seconds": float(evidence.get("rpo_seconds") or 0),
        "tables_compared": int(evidence["checks"]["row_counts"]["tables"]),
    }
    if "client_tools" in evidence:
        tools = evidence["client_tools"]
        metadata["server_version"] = evidence["server_version"]
        metadata["client_tools_major"] = int(tools["major"])
        metadata["client_tools"] = f"{tools['bin_dir']} ({tools['found_by']})"
    context.add_output_metadata(metadata)


@inventory_job(SPEC, __doc__)
def backup_verify() -> None:
    run_restore_drill()
