"""A single connection to the portal database, and the check that its tables exist: for
the CLI and the console, which talk to the database outside a run. Jobs use the pooled
`database.PortalDatabase` resource instead."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import psycopg


class MissingTableError(RuntimeError):
    """A table the job needs is not in the database; the message names it."""


# How long a command waits for a server that does not answer (libpq waits for the
# operating system's TCP timeout, minutes, unless the connection string says otherwise).
CONNECT_TIMEOUT_SECONDS = 10


def connect(
    url: str, autocommit: bool = False, setting: str | None = None, advice: str | None = None
) -> psycopg.Connection:
    """A connection to `url`. With `setting`, the name of what gave the URL (DATABASE_URL),
    a database that cannot be reached or refuses the connection (a stopped server, a wrong
    host, port, user, password or database) raises SettingsError naming it, with libpq's
    reason and never the password, then `advice` (default: check the setting); a command
    refuses with it (cli.arguments.refuse)."""
    if setting is None:
        return psycopg.connect(url, autocommit=autocommit, application_name="mm-orchestration")
    from psycopg.conninfo import conninfo_to_dict

    from mm_orchestration.platform.setting_checks import SettingsError

    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:  # its message quotes the string, which may hold a secret
        raise SettingsError(
            f"{setting} is not a connection string libpq accepts: a postgresql:// URL or "
            "key=value pairs; the value is not shown"
        ) from None
    timeout = params.get("connect_timeout") or CONNECT_TIMEOUT_SECONDS  # the string's own first
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            application_name="mm-orchestration",
            connect_timeout=timeout,
        )
    except psycopg.OperationalError as exc:
        raise SettingsError(unreachable(setting, params, exc, advice)) from None


def unreachable(
    setting: str, params: Mapping[str, object], exc: BaseException, advice: str | None = None
) -> str:
    """Why the database `setting` names could not be used: where it is (database, user,
    host and port, never the password) and libpq's own reason."""
    from mm_orchestration.platform.audit import masked_text

    where = f"database {params.get('dbname') or '(default)'}"
    if params.get("user"):
        where += f" as {params['user']}"
    hosts = str(params.get("host") or params.get("hostaddr") or "localhost")
    where += f" on {hosts}:{params.get('port') or 5432}"
    # libpq's reason names the host, port, user or database, never the password; masked
    # all the same, since a driver's message may quote a connection string.
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    reason = masked_text(reason.removeprefix("connection failed: "))[:500] or type(exc).__name__
    advice = advice or (
        f"Check that the server is running and that {setting}'s host, port, database, user "
        "and password are right (its value is not shown)"
    )
    end = " " if reason.endswith(("?", ".", "!")) else ". "
    return f"{setting}: the database ({where}) cannot be used: {reason}{end}{advice}"


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
