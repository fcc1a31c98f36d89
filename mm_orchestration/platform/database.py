"""The portal's PostgreSQL database, through a small psycopg connection pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from dagster import ConfigurableResource, Failure, InitResourceContext
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool
from pydantic import Field, PrivateAttr

from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.db import (
    MissingTableError,
    connect_timeout,
    require_tables,
    unreachable,
)


class PortalDatabase(ConfigurableResource):
    """The portal database (Neon in production). At most `max_connections` per run."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    url: str = Field(description="PostgreSQL URL; give it as EnvVar('DATABASE_URL').")
    direct_url: str | None = Field(
        default=None,
        description="EnvVar('DATABASE_DIRECT_URL'): the unpooled host, for session locks",
    )
    max_connections: int = Field(default=5, ge=2, le=5, description="The seed's per-run cap.")

    _pool: ConnectionPool | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._pool = None  # opened on first use, so a run that needs no database opens none

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _get_pool(self) -> ConnectionPool:
        if self._pool is None:
            _probe(self.url, "DATABASE_URL")
            self._pool = ConnectionPool(
                self.url,
                min_size=0,
                # With a direct URL the session connection is the run's fifth.
                max_size=self.max_connections - (1 if self.direct_url else 0),
                kwargs={"application_name": "mm-orchestration"},
                open=True,
                name="portal",
                reset=_reset,
                # A connection that waited in the pool may have been closed by the server
                # meanwhile (Neon suspends idle compute; a failover or restart closes every
                # connection): checked before it is handed out, and replaced if dead, so a
                # restart costs a reconnect, not a step's retry.
                check=ConnectionPool.check_connection,
            )
        return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; committed when the block ends, rolled back on error."""
        with self._get_pool().connection() as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """A connection that keeps its server session for the whole block (autocommit).

        A pooler in transaction mode (Neon's, PgBouncer) hands each transaction to any
        server connection, so a session advisory lock taken through it could be released
        on another connection or leak; with `direct_url` this bypasses the pooler.
        """
        if not self.direct_url:
            with self.connection() as conn:
                conn.autocommit = True
                yield conn
            return
        # Named when it cannot be used: Dagster would otherwise retry the step and then
        # sum the failure up as "Exceeded max_retries", libpq's reason buried in a trace.
        direct = _connect(
            self.direct_url,
            "DATABASE_DIRECT_URL",
            autocommit=True,
            application_name="mm-orchestration-session",
        )
        with direct as conn:
            yield conn

    @property
    def session_url(self) -> str:
        """The URL of whole-session work (pg_dump): the direct host when there is one."""
        return self.direct_url or self.url

    def require(self, *tables: str) -> None:
        """Fail the step, without retries, when a table the job needs is missing."""
        with self.connection() as conn:
            try:
                require_tables(conn, tables)
            except MissingTableError as exc:
                # A missing table will still be missing in ten seconds: no retry.
                raise Failure(description=str(exc), allow_retries=False) from exc


def _probe(url: str, setting: str) -> None:
    """Connect once before the pool does: the pool retries a refused connection in the
    background and reports only a timeout 30 s later, while libpq's own reason (a wrong
    password, an unknown host, a server not yet up) is what an operator needs."""
    _connect(url, setting, application_name="mm-orchestration").close()


def _connect(url: str, setting: str, **kwargs: Any) -> psycopg.Connection:
    """A connection to `url`, which `setting` gives. Raises psycopg.OperationalError in
    the wording every refusal of a database shares (db.unreachable: the setting, where,
    whether the server does not answer, refused the credentials or has no such database,
    and libpq's reason, never the password), waiting at most the string's own
    `connect_timeout` or db.CONNECT_TIMEOUT_SECONDS; psycopg.ProgrammingError naming
    `setting` when libpq cannot parse `url` (never quoting it)."""
    with _unquoted(setting):
        params = conninfo_to_dict(url)
        try:
            return psycopg.connect(url, connect_timeout=connect_timeout(params), **kwargs)
        except psycopg.OperationalError as exc:
            raise psycopg.OperationalError(unreachable(setting, params, exc)) from None


@contextmanager
def _unquoted(setting: str) -> Iterator[None]:
    """libpq's parse errors quote the connection string (`missing "=" after "<the
    value>"`), which may be a password, or any secret a run's config read into the
    resource's field: such an error names `setting` instead, and what it should be."""
    try:
        yield
    except psycopg.ProgrammingError:
        raise psycopg.ProgrammingError(
            f"the portal database ({setting}) is not a connection string libpq accepts: a "
            "postgresql:// URL or key=value pairs; the value is not shown"
        ) from None


def _reset(conn: psycopg.Connection) -> None:
    # A borrower may have switched to autocommit (the ledger's lock does); hand back the default.
    conn.autocommit = False
