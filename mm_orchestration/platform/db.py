"""A single connection to the portal database, and the check that its tables exist: for
the CLI and the console, which talk to the database outside a run. Jobs use the pooled
`database.PortalDatabase` resource instead."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import psycopg


class MissingTableError(RuntimeError):
    """A table the job needs is not in the database; the message names it."""


# How long a command waits for a server that does not answer (libpq waits for the
# operating system's TCP timeout, minutes, unless the connection string says otherwise).
CONNECT_TIMEOUT_SECONDS = 10


def connect(
    url: str,
    autocommit: bool = False,
    setting: str | None = None,
    if_unanswered: str | None = None,
) -> psycopg.Connection:
    """A connection to `url`. With `setting`, the name of what gave the URL (DATABASE_URL),
    a database that cannot be reached or refuses the connection (a stopped server, a wrong
    host, port, user, password or database) raises SettingsError naming it, with libpq's
    reason and never the password (`unreachable`); `if_unanswered` replaces the advice
    given when the server does not answer (the local stack's: is `make dev` running?). A
    command refuses with it (cli.arguments.refuse)."""
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
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            application_name="mm-orchestration",
            connect_timeout=connect_timeout(params),
        )
    except psycopg.OperationalError as exc:
        raise SettingsError(
            unreachable(setting, params, exc, if_unanswered=if_unanswered)
        ) from None


def connect_timeout(params: Mapping[str, object]) -> int:
    """Seconds to wait for the server: the connection string's own `connect_timeout`, else
    CONNECT_TIMEOUT_SECONDS."""
    try:
        return int(str(params.get("connect_timeout") or CONNECT_TIMEOUT_SECONDS))
    except ValueError:  # libpq would refuse it itself
        return CONNECT_TIMEOUT_SECONDS


# How libpq (and the server, before the session starts) says why a connection failed:
# the server is not there, it refused who we are, or it has no such database. Matched on
# the text, since a failed connection carries no SQLSTATE.
_UNANSWERED = re.compile(
    r"Connection refused|timeout expired|timed out|could not translate host name|failed to "
    r"resolve host|Name or service not known|Temporary failure in name resolution|No route "
    r"to host|Network is unreachable|No such file or directory|server closed the connection "
    r"unexpectedly|Connection reset|could not connect to server",
    re.IGNORECASE,
)
_CREDENTIALS = re.compile(
    r'authentication failed|role "[^"]*" does not exist|no pg_hba\.conf entry|no password '
    r"supplied|fe_sendauth|is not permitted to log in|permission denied for database",
    re.IGNORECASE,
)
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist', re.IGNORECASE)


def unreachable(
    setting: str,
    params: Mapping[str, object],
    exc: BaseException,
    source: str | None = None,
    if_unanswered: str | None = None,
) -> str:
    """Why the database `setting` names could not be used, in the one wording every
    setting shares (DATABASE_URL, DATABASE_DIRECT_URL, DAGSTER_DATABASE_URL): where it is
    (database, user, and each host and port as given, never the password), whether the
    server does not answer, refused the credentials or has no such database, libpq's own
    reason, and what to check. `source`: what holds the connection string, named in the
    advice (default `setting`); `if_unanswered`: the advice when the server does not answer
    (default: check that it runs, and the host and port)."""
    from mm_orchestration.platform.audit import masked_text

    where = f"database {params.get('dbname') or '(default)'}"
    if params.get("user"):
        where += f" as {params['user']}"
    where += f" on {servers(params)}"
    # libpq's reason names the host, port, user or database, never the password; masked
    # all the same, since a driver's message may quote a connection string.
    reason = " ".join(str(exc).split())  # one line: libpq's are tab-indented, "FATAL:  x"
    reason = masked_text(reason.removeprefix("connection failed: "))[:500] or type(exc).__name__
    source = source or setting
    if _NO_DATABASE.search(reason):
        verdict = "has no such database"
        advice = f"Check {source}'s database name (its value is not shown), or create it"
    elif _CREDENTIALS.search(reason):
        verdict = "refused the credentials"
        advice = (
            f"Check {source}'s user and password (its value is not shown), and that the "
            "server lets that user connect to that database (pg_hba.conf)"
        )
    elif _UNANSWERED.search(reason):
        verdict = "does not answer"
        advice = if_unanswered or (
            f"Check that the server is running and that {source}'s host and port are right "
            "(its value is not shown)"
        )
    else:
        verdict = "cannot be used"
        advice = (
            f"Check that the server is running and that {source}'s host, port, database, "
            "user and password are right (its value is not shown)"
        )
    end = " " if reason.endswith(("?", ".", "!")) else ". "
    return f"{setting}: the database ({where}) {verdict}: {reason}{end}{advice}"


def servers(params: Mapping[str, object]) -> str:
    """Each host and its port as the connection string gives them (`127.0.0.1:5432`,
    `[::1]:5432`, a socket folder), libpq's defaults filled in: `localhost` and 5432."""
    hosts = str(params.get("host") or params.get("hostaddr") or "localhost").split(",")
    ports = [p.strip() or "5432" for p in str(params.get("port") or "").split(",")]
    if len(ports) == 1:
        ports *= len(hosts)
    shown = []
    for host, port in zip(hosts, ports, strict=False):
        host = host.strip() or "localhost"
        shown.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return ", ".join(shown)


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
