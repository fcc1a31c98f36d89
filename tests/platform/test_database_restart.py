"""A database that restarts under a run (Neon suspending idle compute, a failover): the
run's next step, and Dagster's own storage, get a working connection, not the dead one the
pool kept, and so lose no retry to it."""

from __future__ import annotations

import dagster as dg

from mm_orchestration.local.embedded_pg import EmbeddedPostgres
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.storage import POOL_SIZE, ConnectionStringStorage


def test_a_step_after_the_database_restarted_gets_a_live_connection(tmp_path):
    server = EmbeddedPostgres(tmp_path / "restarting", durable=False).start()
    try:
        backends: list[int] = []

        @dg.op
        def before(portal_db: PortalDatabase) -> int:
            with portal_db.connection() as conn:
                backends.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            # The pool keeps that connection; the server restarts under it.
            server.stop()
            server.start()
            return 1

        @dg.op(retry_policy=dg.RetryPolicy(max_retries=0))
        def after(portal_db: PortalDatabase, _: int) -> None:
            with portal_db.connection() as conn:
                backends.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])

        @dg.job(executor_def=dg.in_process_executor)
        def restarting() -> None:
            after(before())

        result = restarting.execute_in_process(
            resources={"portal_db": PortalDatabase(url=server.url("postgres"))},
            raise_on_error=False,
        )
        assert result.success, [
            e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"
        ]
        assert len(backends) == 2 and backends[0] != backends[1]  # a new connection
    finally:
        server.stop()


def _sessions(server: EmbeddedPostgres, dbname: str) -> int:
    with connect(server.url("postgres"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", [dbname]
        ).fetchone()
    return int(row[0]) if row else 0


def test_dagster_storage_keeps_its_connections_and_survives_a_restart(tmp_path):
    """Dagster's storage holds a pool per process (dagster-postgres alone opens a connection
    per query, and a sensor opens a new instance per evaluation); a pooled connection a
    restart closed is replaced before use, so the first query after it succeeds."""
    server = EmbeddedPostgres(tmp_path / "restarting", durable=False).start()
    try:
        with connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE dagster")
        config = {"connection_string": server.url("dagster")}
        ConnectionStringStorage.from_config_value(None, config)  # creates the tables
        before = _sessions(server, "dagster")
        for _ in range(20):  # as twenty sensor evaluations would
            storage = ConnectionStringStorage.from_config_value(None, config)
            assert storage.run_storage.get_runs() == []
            assert storage.schedule_storage.all_instigator_state() == []
        assert _sessions(server, "dagster") - before <= POOL_SIZE

        server.stop()
        server.start()
        assert storage.run_storage.get_runs() == []
        assert (
            storage.event_log_storage.get_event_records(
                dg.EventRecordsFilter(dg.DagsterEventType.RUN_SUCCESS), limit=1
            )
            == []
        )
    finally:
        server.stop()


def test_the_webservers_storage_checks_its_connections_too(tmp_path):
    """A webserver (the console, or the chart's `dagster-webserver`) asks Dagster's storage
    to `optimize_for_webserver`: a held pool whose statements time out. That pool too
    replaces a connection a restart closed, so the console's first request after a restart
    (a launch among them) does not fail."""
    server = EmbeddedPostgres(tmp_path / "restarting", durable=False).start()
    try:
        with connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE dagster")
        storage = ConnectionStringStorage.from_config_value(
            None, {"connection_string": server.url("dagster")}
        )
        parts = (storage.run_storage, storage.event_log_storage, storage.schedule_storage)
        for part in parts:  # what DagsterInstance.optimize_for_webserver does
            part.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=20)
        with storage.run_storage.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "5s"
        assert storage.run_storage.get_runs() == []

        server.stop()
        server.start()
        assert storage.run_storage.get_runs() == []
        assert storage.schedule_storage.all_instigator_state() == []
    finally:
        server.stop()
