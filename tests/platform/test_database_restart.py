"""A database that restarts under a run (Neon suspending idle compute, a failover): the
run's next step gets a working connection, not the dead one the pool kept, and so loses
no retry to it."""

from __future__ import annotations

import dagster as dg

from mm_orchestration.local.embedded_pg import EmbeddedPostgres
from mm_orchestration.platform.database import PortalDatabase


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
