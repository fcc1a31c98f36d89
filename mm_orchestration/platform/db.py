"""A single connection to the portal database, and the check that its tables exist: for
the CLI and the console, which talk to the database outside a run. Jobs use the pooled
`database.PortalDatabase` resource instead."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg


class MissingTableError(RuntimeError):
    """A table the job needs is not in the database; the message names it."""


def connect(url: str, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, application_name="mm-orchestration")


def require_tables(conn: psycopg.Connection, tables: Iterable[str]) -> None:
    """Fail with the names of the missing tables, before any work starts.

    Against a real portal database the `portal` schema belongs to the portal app; we
    never create it there, so a missing table is a deployment problem to name, not fix.
    """
    wanted = list(tables)
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NULL", [wanted]
    ).fetchall()
    missing = [r[0] for r in rows]
    if missing:
        portal = [t for t in missing if t.startswith("portal.")]
        hint = (
            "the portal schema is missing: in development run `mm-jobs migrate "
            "--with-portal-schema`; in production the portal application owns these tables"
            if portal
            else "run `mm-jobs migrate`"
        )
        raise MissingTableError(f"missing table(s) {', '.join(missing)}: {hint}")
