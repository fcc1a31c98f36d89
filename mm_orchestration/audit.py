"""`ops.audit_log`: who did what to which job and run, kept as compliance evidence."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def record(
    conn: psycopg.Connection,
    actor: str,
    action: str,
    job_name: str | None,
    run_id: str | None,
    details: dict[str, Any],
) -> None:
    """One audit entry, in the caller's transaction so it exists exactly when the act does."""
    conn.execute(
        """INSERT INTO ops.audit_log (actor, action, job_name, run_id, details)
           VALUES (%s, %s, %s, %s, %s)""",
        [actor, action, job_name, run_id, Jsonb(details)],
    )
