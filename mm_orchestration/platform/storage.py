"""Dagster's storage from one libpq connection string, in any form libpq accepts.

dagster-postgres takes either separate fields (user, password, host, port, database, a
few params) or a SQLAlchemy URL, so a Unix socket folder, several hosts, `hostaddr`,
`options`, `sslrootcert` or a `key=value` string cannot be said through it, and a
libpq URL handed over as it is would be read by SQLAlchemy 2.1 with the wrong driver.
This storage takes the string the way operators already write `DATABASE_URL` and gives
dagster-postgres the equivalent SQLAlchemy URL (`sqlalchemy_url`). In dagster.yaml:

    storage:
      custom:
        module: mm_orchestration.platform.storage
        class: ConnectionStringStorage
        config:
          connection_string: {env: DAGSTER_DATABASE_URL}

The value stays an `{env: ...}` reference in the file and in what Dagster passes to run
processes, so the password is only ever in the environment.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any
from urllib.parse import urlencode

import psycopg
from dagster import Field, StringSource
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, set_pg_statement_timeout
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import event
from sqlalchemy.engine import Engine

SETTING = "DAGSTER_DATABASE_URL"

# Idle connections a process keeps to Dagster's storage; more are opened when more threads
# need one at once and closed when returned (as dagster-postgres does for every query).
POOL_SIZE = 2
POOL_OVERFLOW = 20
# Reopen a connection after this many seconds, so none outlives a proxy's or a hosted
# database's idle limit by much.
POOL_RECYCLE_SECONDS = 600

_engines: dict[tuple[Any, ...], Engine] = {}
_engines_lock = threading.Lock()


def sqlalchemy_url(conninfo: str) -> str:
    """A libpq connection string (URL or `key=value`) as the SQLAlchemy URL dagster-postgres
    takes. Every parameter travels in the query and reaches psycopg2 as libpq has it, so a
    socket directory, an IPv6 host, an encoded password, `sslmode` or `options` all survive;
    psycopg2 is named because SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3.

    SQLAlchemy reads `host` and `port` itself (its multi-host form) and refuses two things
    libpq allows: one port for several hosts, and several ports with `hostaddr` alone. So
    the one port is given once per host, and `hostaddr` alone gets as many empty host
    names (libpq then uses each address as it is).

    Raises psycopg.ProgrammingError when libpq cannot parse `conninfo`."""
    params = conninfo_to_dict(conninfo)
    hosts, ports = (str(params.get(key) or "").split(",") for key in ("host", "port"))
    if "port" in params and len(ports) == 1 and len(hosts) > 1:
        params["port"] = ",".join(ports * len(hosts))
    if "host" not in params and len(ports) > 1:
        params["host"] = "," * (len(ports) - 1)
    return "postgresql+psycopg2:///?" + urlencode(params)


class ConnectionStringStorage(DagsterPostgresStorage):
    """Dagster's run, event-log and schedule storage in PostgreSQL, configured by one
    libpq connection string (`connection_string`, usually `{env: DAGSTER_DATABASE_URL}`)."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "connection_string": Field(
                StringSource,
                description=f"A libpq connection string (URL or key=value), e.g. from {SETTING}",
            ),
            "should_autocreate_tables": Field(bool, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> ConnectionStringStorage:
        try:
            url = sqlalchemy_url(config_value["connection_string"])
        except psycopg.ProgrammingError:
            # libpq's message quotes the string, password included: name the setting only.
            raise ValueError(
                f"Dagster's storage: connection_string ({SETTING}) is not a connection "
                "string libpq accepts (a postgresql:// URL or key=value pairs)"
            ) from None
        with _engines_lock:
            # Tables were created (or found) when this process first opened the storage.
            known = (url,) in _engines
        storage = cls(
            postgres_url=url,
            should_autocreate_tables=config_value.get("should_autocreate_tables", True)
            and not known,
            inst_data=inst_data,
        )
        storage.share_engine(pooled_engine(url))
        return storage

    def share_engine(self, engine: Engine) -> None:
        """Has the run, event-log and schedule storage use `engine` (dagster-postgres gives
        each its own engine, and one that opens a connection per query).

        A webserver (ours, `mm-jobs console`, or the chart's `dagster-webserver`) then asks
        each part to `optimize_for_webserver`, which in dagster-postgres gives it a new
        pool whose connections are not checked: after a database restart the console's
        first requests failed with `server closed the connection unexpectedly`, and a
        launch among them lost its run to a retry and a false alert. Each part's
        `optimize_for_webserver` is therefore this module's, which keeps the check."""
        parts = (self._run_storage, self._event_log_storage, self._schedule_storage)
        for part in parts:
            part._engine = engine
            part.optimize_for_webserver = partial(_optimize_for_webserver, part)  # type: ignore[method-assign]


def _optimize_for_webserver(
    part: Any, statement_timeout: int, pool_recycle: int, max_overflow: int
) -> None:
    """dagster-postgres's webserver engine (one held connection, more while requests
    overlap, each statement cut off at `statement_timeout` ms), checked before use and
    shared by the three parts."""
    key = ("webserver", part.postgres_url, statement_timeout, pool_recycle, max_overflow)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_pg_engine(
                part.postgres_url,
                isolation_level="AUTOCOMMIT",
                pool_size=1,
                pool_recycle=pool_recycle,
                max_overflow=max_overflow,
                pool_pre_ping=True,
            )
            event.listen(
                engine,
                "connect",
                lambda connection, _: set_pg_statement_timeout(connection, statement_timeout),
            )
    part._engine = engine


def pooled_engine(url: str) -> Engine:
    """This process's one engine for Dagster's storage at `url` (a SQLAlchemy URL).

    dagster-postgres opens a new connection for every query, and a sensor's context opens a
    new instance at every evaluation: an idle local stack opened 2,038 connections a
    minute (34 a second), each a new server process, costing the database 12 CPU-seconds a
    minute. One pool per process ends that. Each connection is checked before it is handed
    out (`pool_pre_ping`), so one that a database restart or a Neon suspend closed is
    replaced, not failed on (outside-contracts.md, "Neon and other hosted PostgreSQL")."""
    with _engines_lock:
        engine = _engines.get((url,))
        if engine is None:
            engine = _engines[(url,)] = create_pg_engine(
                url,
                isolation_level="AUTOCOMMIT",
                pool_size=POOL_SIZE,
                max_overflow=POOL_OVERFLOW,
                pool_recycle=POOL_RECYCLE_SECONDS,
                pool_pre_ping=True,
            )
        return engine
