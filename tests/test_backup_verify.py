"""backup-verify: the first business day, and a real pg_dump / pg_restore drill."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dagster import build_schedule_context

from mm_orchestration.db import connect
from mm_orchestration.demo_data import seed_demo
from mm_orchestration.jobs.backup_verify import (
    DrillFailed,
    backup_verify,
    first_business_day,
    is_business_day,
    run_local_drill,
)
from mm_orchestration.resources.restore_drill import RestoreDrill
from tests.conftest import run_job

SYDNEY = ZoneInfo("Australia/Sydney")


@pytest.mark.parametrize(
    ("year", "month", "expected"),
    [
        (2026, 1, date(2026, 1, 2)),  # 1 January is a holiday
        (2027, 1, date(2027, 1, 4)),  # 1 January (Fri) a holiday, then the weekend
        (2026, 2, date(2026, 2, 2)),  # starts on a Sunday
        (2026, 8, date(2026, 8, 3)),  # starts on a Saturday
        (2026, 12, date(2026, 12, 1)),
    ],
)
def test_first_business_day(year, month, expected):
    assert first_business_day(year, month) == expected


def test_first_business_day_over_two_years():
    for year in (2026, 2027):
        for month in range(1, 13):
            first = first_business_day(year, month)
            assert is_business_day(first)
            assert all(not is_business_day(date(year, month, d)) for d in range(1, first.day))


def test_schedule_runs_only_on_the_first_business_day():
    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.settings import Settings

    sched = build_definitions(Settings()).resolve_schedule_def("backup_verify_schedule")
    assert sched.cron_schedule == "0 9 1-7 * *"
    outcomes = {}
    for day in (1, 2, 3, 4, 5):
        tick = datetime(2027, 1, day, 9, 0, tzinfo=SYDNEY)
        with build_schedule_context(scheduled_execution_time=tick) as context:
            data = sched.evaluate_tick(context)
        outcomes[day] = bool(data.run_requests)
    assert outcomes == {1: False, 2: False, 3: False, 4: True, 5: False}


@pytest.fixture
def seeded(database_url):
    with connect(database_url) as conn:
        seed_demo(conn)
    return database_url


def scratch_databases(url):
    with connect(url) as conn:
        return conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'mm_drill_%'"
        ).fetchall()


def test_drill_succeeds_on_a_healthy_database(seeded):
    evidence = run_local_drill(seeded, RestoreDrill())
    checks = evidence["checks"]
    assert checks["row_counts"]["passed"] and checks["row_counts"]["tables"] >= 20
    assert checks["key_table_checksums"]["passed"] and checks["migration_version"]["passed"]
    assert set(checks["smoke_queries"]) >= {"portal.tenants", "portal.share_links"}
    assert evidence["rto_seconds"] > 0 and evidence["rpo_seconds"] is not None
    assert scratch_databases(seeded) == []


def test_drill_fails_with_a_named_check_when_the_copy_differs(seeded):
    def tamper(scratch_url):
        with connect(scratch_url) as conn:
            conn.execute(
                "DELETE FROM portal.share_link_tokens WHERE id IN "
                "(SELECT id FROM portal.share_link_tokens LIMIT 1)"
            )
            conn.execute("UPDATE portal.tenants SET name = name || ' (changed)'")

    with pytest.raises(DrillFailed) as err:
        run_local_drill(seeded, RestoreDrill(), after_restore=tamper)
    message = str(err.value)
    assert "row_counts" in message and "portal.share_link_tokens" in message
    assert "key_table_checksums" in message and "portal.tenants" in message
    assert scratch_databases(seeded) == []


def test_job_records_the_drill(seeded, portal_db, job_settings, conn):
    result = run_job(
        backup_verify,
        {"portal_db": portal_db, "restore_drill": RestoreDrill(), "job_settings": job_settings},
    )
    assert result.success
    status, method, checks = conn.execute(
        "SELECT status, method, checks FROM ops.backup_drills"
    ).fetchone()
    assert (status, method) == ("succeeded", "local")
    assert checks["checks"]["row_counts"]["passed"]


def test_failed_drill_fails_the_run_and_names_compliance(seeded, portal_db, job_settings, conn):
    broken = RestoreDrill(pg_bin_dir="/nonexistent")
    result = run_job(
        backup_verify,
        {"portal_db": portal_db, "restore_drill": broken, "job_settings": job_settings},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message
    assert "compliance@motionmavericks.com.au" in message
    status, error = conn.execute("SELECT status, error FROM ops.backup_drills").fetchone()
    assert status == "failed" and "pg_dump" in error


class FakeNeon:
    """Speaks the three Neon endpoints the drill uses; a branch is a real database copy."""

    def __init__(self, server_url_for, source_db):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from psycopg import sql

        self.calls = []
        self.branches = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append(("POST", self.path, self.headers["Authorization"], body))
                branch = f"br-{len(fake.branches) + 1}"
                db = f"neon_{branch.replace('-', '_')}"
                with connect(server_url_for("postgres"), autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(db), sql.Identifier(source_db)
                        )
                    )
                fake.branches[branch] = {"db": db, "polls": 0}
                self._reply(
                    201,
                    {
                        "branch": {"id": branch},
                        "operations": [{"id": f"op-{branch}", "status": "running"}],
                        "connection_uris": [{"connection_uri": server_url_for(db)}],
                    },
                )

            def do_GET(self):
                fake.calls.append(("GET", self.path, self.headers["Authorization"], None))
                branch = self.path.rsplit("op-", 1)[1]
                fake.branches[branch]["polls"] += 1
                done = fake.branches[branch]["polls"] >= 2
                self._reply(200, {"operation": {"status": "finished" if done else "running"}})

            def do_DELETE(self):
                fake.calls.append(("DELETE", self.path, self.headers["Authorization"], None))
                branch = self.path.rsplit("/", 1)[1]
                with connect(server_url_for("postgres"), autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                            sql.Identifier(fake.branches.pop(branch)["db"])
                        )
                    )
                self._reply(200, {"branch": {"id": branch}})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_neon_drill_branches_compares_and_deletes(pg_server, seeded):
    from mm_orchestration.jobs.backup_verify import run_neon_drill

    source_db = seeded.rsplit("/", 1)[1]
    # A template needs no other sessions: the fake copies the source as Neon would branch it.
    fake = FakeNeon(pg_server.url, source_db)
    drill = RestoreDrill(
        method="neon",
        neon_api_key="neon-key",
        neon_project_id="proj-1",
        neon_api_host=fake.url,
        neon_poll_seconds=0.01,
    )
    try:
        evidence = run_neon_drill(seeded, drill)
    finally:
        fake.server.shutdown()
    assert evidence["checks"]["row_counts"]["passed"]
    assert evidence["neon_branch"] == "br-1" and fake.branches == {}
    methods = [(c[0], c[1].split("?")[0]) for c in fake.calls]
    assert methods == [
        ("POST", "/api/v2/projects/proj-1/branches"),
        ("GET", "/api/v2/projects/proj-1/operations/op-br-1"),
        ("GET", "/api/v2/projects/proj-1/operations/op-br-1"),
        ("DELETE", "/api/v2/projects/proj-1/branches/br-1"),
    ]
    assert all(c[2] == "Bearer neon-key" for c in fake.calls)
    assert "parent_timestamp" in fake.calls[0][3]["branch"]


def test_neon_branch_that_differs_fails_and_is_still_deleted(pg_server, seeded):
    from mm_orchestration.jobs.backup_verify import run_neon_drill

    fake = FakeNeon(pg_server.url, seeded.rsplit("/", 1)[1])
    drill = RestoreDrill(
        method="neon",
        neon_api_key="k",
        neon_project_id="p",
        neon_api_host=fake.url,
        neon_poll_seconds=0.01,
    )

    def tamper(url):
        with connect(url) as conn:
            conn.execute("DELETE FROM ops.schema_migrations WHERE name LIKE 'ops/0004%'")

    try:
        with pytest.raises(DrillFailed, match="migration_version"):
            run_neon_drill(seeded, drill, after_restore=tamper)
    finally:
        fake.server.shutdown()
    assert fake.branches == {}


def test_database_passwords_stay_off_the_tools_command_lines(tmp_path):
    """`ps` shows every user a command line: the drill hands pg_dump and pg_restore their
    passwords in a private PGPASSFILE that is gone when they finish."""
    record = tmp_path / "record"
    for tool in ("pg_dump", "pg_restore"):
        script = tmp_path / tool
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{tool} $*" >> {record}\n'
            f'echo "$PGPASSFILE" >> {record}\n'
            f'stat -c "%a" "$PGPASSFILE" >> {record}\n'
            f'cat "$PGPASSFILE" >> {record}\n'
            "cat > /dev/null\n"
        )
        script.chmod(0o755)
    drill = RestoreDrill(pg_bin_dir=str(tmp_path))
    drill.pipe(
        [
            "--format=custom",
            "--dbname=postgresql://jobs:s3cr%3At@db.example:6543/portal?sslmode=require",
        ],
        ["--dbname=postgresql://jobs:other@127.0.0.1:5432/drill_1"],
    )
    lines = record.read_text().splitlines()
    commands = [line for line in lines if line.startswith(("pg_dump", "pg_restore"))]
    assert sorted(commands) == [
        "pg_dump --format=custom --dbname=postgresql://jobs@db.example:6543/portal?sslmode=require",
        "pg_restore --dbname=postgresql://jobs@127.0.0.1:5432/drill_1",
    ]
    assert "600" in lines
    assert "*:*:portal:jobs:s3cr\\:t" in lines and "*:*:drill_1:jobs:other" in lines
    passfiles = {line for line in lines if line.endswith("/pgpass")}
    assert len(passfiles) == 1 and not any(Path(p).exists() for p in passfiles)
