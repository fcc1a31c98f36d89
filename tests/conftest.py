"""Shared test fixtures: one real PostgreSQL server per session, a fresh database per test
(cloned from a migrated template), and a local SendGrid API for the real SDK."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance
from psycopg import sql

from mm_orchestration.features.restore_drill.resource import RestoreDrill
from mm_orchestration.local.embedded_pg import EmbeddedPostgres, free_port
from mm_orchestration.local.topology import Topology
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.instance import write_home
from mm_orchestration.platform.migrate import migrate
from mm_orchestration.platform.outbox.mailer import Mailer
from tests.sendgrid_server import SendGridRecorder

TEMPLATE = "mm_template"


# A RAM file system holds the run's files when it has this much room: a run leaves 1.8 GB
# (PostgreSQL clusters, Dagster homes, logs) on four workers.
SCRATCH_ROOM_BYTES = 4 * 1024**3


def scratch_base(candidate: Path = Path("/dev/shm")) -> Path:
    """Where a run's temporary files go: `candidate` when it is a RAM file system this user
    may write and execute from with room to spare, else the system's temporary directory.

    Each test clones its database, which creates about 480 files. On ext4 a file created
    soon after many were deleted costs the kernel a scan for a free inode
    (`recently_deleted` in `perf`): 45-400 ms of CPU per clone against 18 ms on tmpfs, a
    third of the suite's CPU on a 2-core machine. MM_TEST_TMPDIR names the folder instead."""
    chosen = os.environ.get("MM_TEST_TMPDIR")
    if chosen:
        return Path(chosen)
    try:
        stats = os.statvfs(candidate)
        usable = (
            os.access(candidate, os.W_OK | os.X_OK)
            and not stats.f_flag & (os.ST_NOEXEC | os.ST_RDONLY)
            and stats.f_bavail * stats.f_frsize >= SCRATCH_ROOM_BYTES
        )
    except OSError:
        usable = False
    return candidate if usable else Path(tempfile.gettempdir())


_RUN_ROOT: Path | None = None


def _default_stop_signals() -> None:
    """The suite's processes, and so every process a test starts, stop on SIGINT and
    SIGTERM, however the suite was started. A shell starts a background job (`make test &`,
    a CI runner's script) with SIGINT ignored; Dagster, after every in-process run, gives
    SIGTERM whatever SIGINT has (`setup_interrupt_handlers`), and an ignored signal stays
    ignored in children: the tools and stacks the tests then stop with SIGTERM, and `make`
    itself, would not stop. SIGHUP is left alone (`nohup` asked for that)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    _default_stop_signals()
    # pytest keeps its last three temporary roots per user and deletes older ones, so a
    # second test run (another checkout, or the same one at the same time) could delete
    # this run's PostgreSQL data directory under it. Each run gets its own root, named
    # by checkout and process (xdist's workers inherit the variable); roots of runs whose
    # process is gone are removed.
    global _RUN_ROOT
    if "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    digest = hashlib.sha1(str(config.rootpath).encode()).hexdigest()[:10]
    base = scratch_base()
    for folder in {base, Path(tempfile.gettempdir())}:
        for old in folder.glob(f"mm-orchestration-{digest}-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(old, ignore_errors=True)
    _RUN_ROOT = base / f"mm-orchestration-{digest}-{os.getpid()}"
    _RUN_ROOT.mkdir(exist_ok=True)
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(_RUN_ROOT)
    # Every temporary file of the run, the tests' and their processes' (Dagster's sockets
    # and homes, staged binaries), goes under its root too: removed with it, never left in
    # /tmp by a run stopped midway. Writable by all, as /tmp is: servers run as `nobody`.
    scratch = _RUN_ROOT / "tmp"
    scratch.mkdir(exist_ok=True)
    scratch.chmod(0o1777)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None
    _stop_servers_left_when_this_process_ends(_RUN_ROOT)


def _stop_servers_left_when_this_process_ends(root: Path) -> None:
    """Start tests/reaper.py: once this process has ended, however it ended, it stops the
    PostgreSQL servers still running under the run's own root (a Ctrl-C or a kill midway
    leaves them: pg_ctl daemonises them out of the run's process group) and removes the
    semaphores made since now that killed processes left. Only this run's own root, never
    a folder someone else may use."""
    subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("reaper.py")), str(os.getpid()), str(root),
         str(time.time())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the run's group does not stop it
    )  # fmt: skip


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A passing run's files are of no further use and may be in RAM; a failing run's stay
    # for a look until the next run.
    if _RUN_ROOT is not None and exitstatus == 0:
        shutil.rmtree(_RUN_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    # MM_TEST_PG_BIN: another major version's binaries (.ci/run's version matrix).
    bin_dir = os.environ.get("MM_TEST_PG_BIN")
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("pg") / "cluster",
        durable=False,
        bin_dir=Path(bin_dir) if bin_dir else None,
    ).start()
    with connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    with connect(server.url(TEMPLATE), autocommit=True) as conn:
        migrate(conn, with_portal_schema=True)
    yield server
    with _admin_lock:
        held = _admin.pop(server.url("postgres"), None)
    if held is not None:
        held.close()
    server.stop()


_admin: dict[str, psycopg.Connection] = {}
_admin_lock = threading.Lock()


def _as_admin(server: EmbeddedPostgres, statement: sql.Composable) -> None:
    """Run `statement` on the server's `postgres` database through one held connection per
    server: a connection of its own for every test database made and dropped would be two
    new server processes per test (a thousand tests)."""
    url = server.url("postgres")
    with _admin_lock:
        for attempt in (1, 2):
            conn = _admin.get(url)
            if conn is None or conn.closed:
                conn = _admin[url] = connect(url, autocommit=True)
            try:
                conn.execute(statement)
                return
            except psycopg.OperationalError:
                conn.close()  # the server restarted under it: once more, on a new one
                if attempt == 2:
                    raise


def create_database(server: EmbeddedPostgres, template: str | None = TEMPLATE) -> str:
    """A new database (a copy of `template`, else empty); FILE_COPY copies the template's
    files as they are, where the default strategy writes every page through the WAL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    _as_admin(server, statement + sql.SQL(" STRATEGY FILE_COPY"))
    return name


def drop_database(server: EmbeddedPostgres, name: str) -> None:
    _as_admin(
        server, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )


@pytest.fixture
def database_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A migrated database with the portal schema, all to this test."""
    name = create_database(pg_server)
    yield pg_server.url(name)
    drop_database(pg_server, name)


@pytest.fixture(scope="session")
def dagster_template(pg_server: EmbeddedPostgres) -> str:
    """A database holding Dagster's tables and nothing else, made once per session to
    clone: Dagster makes its 40-odd tables in a new storage database in about 0.5 s, a
    clone takes 25 ms, and some hundred tests and processes each open a new one."""
    from dagster_postgres import DagsterPostgresStorage

    from mm_orchestration.platform.storage import sqlalchemy_url

    name = create_database(pg_server, template=None)
    # dagster-postgres's own storage makes the tables, each query on a connection closed
    # after it: nothing stays connected to the template, as CREATE DATABASE ... TEMPLATE
    # requires (ours keeps a pool).
    DagsterPostgresStorage(postgres_url=sqlalchemy_url(pg_server.url(name)))
    return name


@pytest.fixture
def dagster_storage(
    pg_server: EmbeddedPostgres, dagster_template: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database for Dagster's own storage (its tables made), named by
    DAGSTER_DATABASE_URL, which dagster.yaml (and deploy/dagster.k8s.yaml) read."""
    name = create_database(pg_server, template=dagster_template)
    monkeypatch.setenv("DAGSTER_DATABASE_URL", pg_server.url(name))
    yield name
    drop_database(pg_server, name)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection for seeding and asserting."""
    with connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def portal_db(database_url: str) -> Iterator[PortalDatabase]:
    db = PortalDatabase(url=database_url)
    yield db
    db.close()


@pytest.fixture
def sendgrid() -> Iterator[SendGridRecorder]:
    recorder = SendGridRecorder()
    yield recorder
    recorder.close()


@pytest.fixture
def mailer(sendgrid: SendGridRecorder) -> Mailer:
    return Mailer(
        api_key="SG.test-key",
        api_host=sendgrid.url,
        mail_from="jobs@motionmavericks.example",
        backoff_seconds=0.01,
        max_rate_limit_wait_seconds=2,
    )


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def dagster_env(
    pg_server: EmbeddedPostgres,
    dagster_template: str,
    database_url: str,
    tmp_path: Path,
    project_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """The environment of an `mm-jobs` process: a DAGSTER_HOME with the project's
    dagster.yaml, Dagster's storage in a database of its own, the portal's in
    `database_url`; also set in this process, for a DagsterInstance.get() here."""
    storage = create_database(pg_server, template=dagster_template)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(project_root / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DATABASE_URL": pg_server.url(storage),
        "MM_DATA_DIR": str(tmp_path / "data"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {**os.environ, **env}
    drop_database(pg_server, storage)


@pytest.fixture
def job_settings():
    from mm_orchestration.platform.job_settings import JobSettings

    return JobSettings(digest_template_id="d-digest-test")


QUIET = "0 0 1 1 *"  # once a year: jobs other than the one under test stay out of the way


@pytest.fixture
def topology(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    dagster_storage: str,
    sendgrid: SendGridRecorder,
) -> Iterator[Topology]:
    """The production topology (code server, daemon, webserver) on this test's databases,
    SendGrid on the recorder; share-link expiry ticks every minute (indirect parameter: the
    job that does), every other schedule once a year. Started by the test."""
    home = write_home(tmp_path / "dagster_home")
    (tmp_path / "logs").mkdir()
    every_minute = getattr(request, "param", "share-link-expiry")
    overrides = [
        f"{spec.name}={'* * * * *' if spec.name == every_minute else QUIET}"
        for spec in inventory.INVENTORY
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "SENDGRID_", "MM_", "SENTRY_"))
    }
    env.update(
        DATABASE_URL=database_url,
        MM_ENV="staging",
        MM_SCHEDULE_OVERRIDES=";".join(overrides),
        MM_DATA_DIR=str(tmp_path / "mm"),
        SENDGRID_API_KEY="SG.test-key",
        SENDGRID_API_HOST=sendgrid.url,
        SENDGRID_DIGEST_TEMPLATE_ID="d-test",
        # The console as `mm-jobs prod-local` starts it: the local OS user, an admin.
        MM_CONSOLE_AUTH="local",
    )
    topology = Topology(
        dagster_home=home,
        env=env,
        grpc_port=free_port(),
        web_port=free_port(),
        log_dir=tmp_path / "logs",
    )
    try:
        yield topology
    finally:
        topology.stop_all()


def session_drill() -> RestoreDrill:
    """The restore drill as production configures it for the session's server: with
    MM_PG_BIN_DIR at that server's own tools when the suite runs another major version."""
    return RestoreDrill(pg_bin_dir=os.environ.get("MM_TEST_PG_BIN", ""))


def run_job(job, resources, run_config=None, tags=None):
    """Execute a job in process on a throwaway instance, never raising on failure."""
    with DagsterInstance.ephemeral() as inst:
        return job.execute_in_process(
            resources=resources,
            run_config=run_config or {},
            tags=tags or {},
            instance=inst,
            raise_on_error=False,
        )


# Tests of whole process stacks mostly wait (on minute boundaries, a browser, consoles
# starting): they go first, so that under `make test`'s two workers the rest of the suite
# runs beside them.
_SLOW_FIRST = (
    "test_production_topology.py",
    "test_stopping_the_stack.py",
    "test_every_run_watched.py",
    "test_alerting_daemon.py",
    "test_console_proxy.py",
    "test_dev_command.py",
    "test_console_front.py",
    "test_console_attacks.py",
)


def _uses_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope == "module"
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )


# First: xdist's own hook reads the xdist_group marks added here.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # They prove processes, not SQL: .ci/run's other PostgreSQL versions skip them.
        if item.path.name in _SLOW_FIRST:
            item.add_marker(pytest.mark.stack)
        # A module's own server (a console, a second PostgreSQL) is started once per worker
        # that runs one of its tests: keep such a module's tests on one worker (`make test`
        # distributes with --dist loadgroup; everything else is spread test by test).
        if _uses_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _SLOW_FIRST.index(name) if name in _SLOW_FIRST else len(_SLOW_FIRST)

    items.sort(key=rank)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's last lines say what was not tried for want of a Debian package, and the
    command that installs it (tests/debian.py): after pytest's own summary, durations and
    failures included, where a newcomer reads."""
    from tests.debian import summary

    terminalreporter = config.pluginmanager.get_plugin("terminalreporter")
    if terminalreporter is None:
        return
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons.append(str(longrepr[2]))
    for line in summary(reasons):
        terminalreporter.write_line(line, yellow=True, bold=True)
