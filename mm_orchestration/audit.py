"""`ops.audit_log`: who did what to which job and run, kept as compliance evidence."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import yaml
from psycopg.types.json import Jsonb

# Keys whose values are never written to the audit (run config, tags, variables).
SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|dsn|credential|authori[sz]ation|private|cookie",
    re.IGNORECASE,
)
# A URL's password (postgresql://user:PASSWORD@host).
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]+@")
MASK = "***"


def record(
    conn: psycopg.Connection,
    actor: str,
    action: str,
    job_name: str | None,
    run_id: str | None,
    details: dict[str, Any],
    *,
    role: str | None = None,
    target: str | None = None,
    outcome: str | None = None,
) -> int:
    """One audit entry, in the caller's transaction so it exists exactly when the act does.
    Returns its id. `role`, `target` and `outcome` are the console's (migration 0010)."""
    row = conn.execute(
        """INSERT INTO ops.audit_log
               (actor, action, job_name, run_id, details, role, target, outcome)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        [actor, action, job_name, run_id, Jsonb(details), role, target, outcome],
    ).fetchone()
    assert row is not None
    return int(row[0])


def settle(
    conn: psycopg.Connection,
    entry_id: int,
    outcome: str,
    run_id: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """How an audited action ended (the entry was written before it started)."""
    conn.execute(
        """UPDATE ops.audit_log
              SET outcome = %s, run_id = coalesce(%s, run_id),
                  details = details || jsonb_build_object('result', %s::jsonb)
            WHERE id = %s""",
        [outcome, run_id, Jsonb(result or {}), entry_id],
    )


def masked(value: Any) -> Any:
    """`value` with every secret replaced by ***: values under a secret-looking key, the
    value of a `{key, value}` tag whose key looks secret, a URL's password, and the same
    inside run config given as YAML text."""
    if isinstance(value, dict):
        if set(value) == {"key", "value"} and SECRET_KEY.search(str(value["key"])):
            return {"key": value["key"], "value": MASK}
        return {
            str(k): (MASK if SECRET_KEY.search(str(k)) and v not in (None, "") else masked(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    if isinstance(value, str):
        if "\n" in value and ":" in value:  # run config as YAML text
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = None
            if isinstance(parsed, dict):
                return masked(parsed)
        return _URL_PASSWORD.sub(rf"\1{MASK}@", value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)
