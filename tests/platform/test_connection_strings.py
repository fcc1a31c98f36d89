"""Every connection string libpq accepts works for the jobs, Dagster's storage and the drill.

A cluster of this module's own listens on 127.0.0.1, on ::1 when the machine has an IPv6
loopback, and on a Unix socket in a folder of its own; everyone but `postgres` must give
a password (scram-sha-256), so a connection that succeeds proves the password arrived
intact. The role's name and password hold `@ : / ?`, which a URL must percent-encode.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy
import yaml
from dagster import DagsterInstance
from dagster._serdes import serialize_value
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mm_orchestration.features.restore_drill.resource import RestoreDrill, split_password
from mm_orchestration.local.embedded_pg import EmbeddedPostgres
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.instance import (
    refuse_portal_storage,
    sqlalchemy_url,
    storage_url,
    write_home,
)
from mm_orchestration.platform.settings import Settings, SettingsError

ROLE = "mm/jobs@drill:1?"
PASSWORD = "p@ss:w/rd?"
PORTAL = "conn_portal"
DAGSTER = "conn_dagster"
SCRATCH = "conn_scratch"
# The role and password as a URL must carry them.
USERINFO = f"{quote(ROLE, safe='')}:{quote(PASSWORD, safe='')}"
HBA = """\
local all postgres trust
host  all postgres 127.0.0.1/32 trust
host  all postgres ::1/128 trust
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
"""


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_loopback()


class Cluster(NamedTuple):
    server: EmbeddedPostgres
    port: int
    socket_dir: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("conn") / "cluster", durable=False)
    server.start()  # initdb, and the port; then again with a socket and password auth
    server.stop()
    # Short (a socket path has ~100 bytes) and writable by the server's own user.
    socket_dir = tempfile.mkdtemp(prefix="mm-sock-")
    Path(socket_dir).chmod(0o1777)
    try:
        (server.data_dir / "pg_hba.conf").write_text(HBA)
        listen = "127.0.0.1,::1" if IPV6 else "127.0.0.1"
        # EmbeddedPostgres.start turns the socket off; this module needs one.
        server._pg_ctl(
            [
                *("-w", "-t", "60", "-l", str(server.log_file), "start", "-o"),
                f"-h {listen} -p {server.port} -c unix_socket_directories={socket_dir} "
                "-c fsync=off -c synchronous_commit=off",
            ]
        )
        with connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(PASSWORD)
                )
            )
            for name in (PORTAL, DAGSTER, SCRATCH):
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(ROLE)
                    )
                )
        with connect(server.url(PORTAL), autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ROLE)))
            conn.execute("CREATE TABLE drilled AS SELECT 1 AS id")
        yield Cluster(server, server.port, socket_dir)
    finally:
        server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


class Form(NamedTuple):
    conninfo: str
    host: str  # as libpq parses it
    port: str


def forms(c: Cluster, db: str) -> dict[str, Form]:
    """One string per way of writing a connection, all to database `db` as ROLE."""
    port, sock = str(c.port), c.socket_dir
    closed = str(_closed_port())
    found = {
        "percent-encoded, sslmode": Form(
            f"postgresql://{USERINFO}@127.0.0.1:{port}/{db}?sslmode=disable", "127.0.0.1", port
        ),
        "options, target_session_attrs": Form(
            f"postgres://{USERINFO}@localhost:{port}/{db}?sslmode=disable"
            "&options=-c%20statement_timeout%3D5000&target_session_attrs=read-write",
            "localhost",
            port,
        ),
        "socket folder in the query": Form(
            f"postgresql://{USERINFO}@/{db}?host={sock}&port={port}", sock, port
        ),
        "socket folder as an encoded host": Form(
            f"postgresql://{USERINFO}@{quote(sock, safe='')}:{port}/{db}", sock, port
        ),
        "several hosts, a port each": Form(
            f"postgresql://{USERINFO}@127.0.0.1:{closed},127.0.0.1:{port}/{db}",
            "127.0.0.1,127.0.0.1",
            f"{closed},{port}",
        ),
        "several hosts, one port": Form(
            f"postgresql://{USERINFO}@/{db}?host={sock},127.0.0.1&port={port}",
            f"{sock},127.0.0.1",
            port,
        ),
        "key=value": Form(
            f"host={sock} port={port} dbname={db} user='{ROLE}' password='{PASSWORD}' "
            "sslmode=disable options='-c statement_timeout=5000'",
            sock,
            port,
        ),
        "key=value, hostaddr alone": Form(
            f"hostaddr=127.0.0.1,127.0.0.1 port={closed},{port} dbname={db} "
            f"user='{ROLE}' password='{PASSWORD}'",
            "",
            f"{closed},{port}",
        ),
    }
    if IPV6:
        found["IPv6 in brackets"] = Form(
            f"postgresql://{USERINFO}@[::1]:{port}/{db}?sslmode=disable", "::1", port
        )
    return found


def _closed_port() -> int:
    """A port nothing listens on: libpq must move on to the next host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FORM_NAMES = [
    "percent-encoded, sslmode",
    "options, target_session_attrs",
    "socket folder in the query",
    "socket folder as an encoded host",
    "several hosts, a port each",
    "several hosts, one port",
    "key=value",
    "key=value, hostaddr alone",
    pytest.param(
        "IPv6 in brackets",
        marks=pytest.mark.skipif(
            not IPV6, reason="this machine has no IPv6 loopback (::1 cannot be bound)"
        ),
    ),
]


def _who(conn: psycopg.Connection) -> tuple[str, str, str]:
    row = conn.execute(
        "SELECT current_database(), current_user, current_setting('statement_timeout')"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _timeout(name: str) -> str:
    return "5s" if "options" in name or name == "key=value" else "0"


@pytest.mark.parametrize("name", FORM_NAMES)
def test_settings_parse_each_form_as_libpq_does(cluster, name):
    form = forms(cluster, PORTAL)[name]
    settings = Settings.from_env(
        {"DATABASE_URL": form.conninfo, "DATABASE_DIRECT_URL": form.conninfo}
    )
    assert settings.database_url == settings.database_direct_url == form.conninfo
    params = conninfo_to_dict(form.conninfo)
    assert (params.get("user"), params.get("password"), params.get("dbname")) == (
        ROLE,
        PASSWORD,
        PORTAL,
    )
    assert (params.get("host", ""), params.get("port")) == (form.host, form.port)


@pytest.mark.parametrize("name", FORM_NAMES)
def test_the_jobs_connect_with_each_form(cluster, name):
    form = forms(cluster, PORTAL)[name]
    db = PortalDatabase(url=form.conninfo, direct_url=form.conninfo)
    try:
        with db.connection() as conn:
            assert _who(conn) == (PORTAL, ROLE, _timeout(name))
        with db.session() as conn:
            assert _who(conn) == (PORTAL, ROLE, _timeout(name))
    finally:
        db.close()


def test_a_wrong_password_is_refused(cluster):
    """The control: the server does check passwords, so the other tests' logins prove
    that the encoded password reached it intact."""
    url = f"postgresql://{quote(ROLE, safe='')}:p%40ss@127.0.0.1:{cluster.port}/{PORTAL}"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(url).close()


def test_a_job_that_cannot_log_in_says_why_at_once(cluster):
    """The pool would retry in the background and report only a 30 s timeout; the
    resource's first connection names the setting and libpq's reason instead."""
    url = f"postgresql://{quote(ROLE, safe='')}:p%40ss@127.0.0.1:{cluster.port}/{PORTAL}"
    db = PortalDatabase(url=url)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as error:
        with db.connection():
            pass
    assert time.monotonic() - started < 10
    assert str(error.value).startswith(
        f"DATABASE_URL: the database (database {PORTAL} as {ROLE} on 127.0.0.1:{cluster.port})"
        " refused the credentials: "
    ), error.value
    assert "password authentication failed" in str(error.value)
    assert "p@ss" not in str(error.value) and "p%40ss" not in str(error.value)


def test_a_command_refused_its_password_names_the_setting_and_never_the_password(
    cluster, tmp_path, monkeypatch, capsys
):
    """`mm-jobs` against a server that refuses the password: one JSON line naming
    DATABASE_URL (exit 2) with libpq's reason, the password nowhere, in any spelling."""
    import json

    from mm_orchestration.cli import main

    wrong = "wr0ng:p@ss/canary"
    userinfo = f"{quote(ROLE, safe='')}:{quote(wrong, safe='')}"
    url = f"postgresql://{userinfo}@127.0.0.1:{cluster.port}/{PORTAL}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MM_DATA_DIR", str(tmp_path))
    assert main(["dlq", "list"]) == 2
    out, err = capsys.readouterr()
    (line,) = [json.loads(x) for x in err.splitlines() if x.strip()]
    assert line["event"].startswith("DATABASE_URL: the database (database conn_portal as "), line
    assert "password authentication failed" in line["event"] and line["exitCode"] == 2
    for spelling in (wrong, quote(wrong, safe=""), "canary"):
        assert spelling not in out + err


@pytest.mark.parametrize("name", FORM_NAMES)
def test_the_sqlalchemy_url_reaches_the_same_database(cluster, name):
    form = forms(cluster, PORTAL)[name]
    engine = sqlalchemy.create_engine(sqlalchemy_url(form.conninfo))
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT current_database(), current_user, current_setting('statement_timeout')"
            ).one()
        assert tuple(row) == (PORTAL, ROLE, _timeout(name))
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", FORM_NAMES)
def test_dagster_storage_written_from_each_form_connects(cluster, tmp_path, name):
    """`write_home` puts the connection string in dagster.yaml; the instance opens on it,
    keeps its tables in its own database, and is not taken for the portal database."""
    portal = forms(cluster, PORTAL)[name].conninfo
    home = write_home(tmp_path / "home", forms(cluster, DAGSTER)[name].conninfo)
    refuse_portal_storage(storage_url(home), portal)
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs_count() == 0
    with connect(cluster.server.url(DAGSTER)) as conn:
        row = conn.execute("SELECT to_regclass('public.runs') IS NOT NULL").fetchone()
        assert row == (True,)
    same = write_home(tmp_path / "same", portal)
    with pytest.raises(SettingsError, match="is the portal database"):
        refuse_portal_storage(storage_url(same), portal)


@pytest.mark.parametrize("name", FORM_NAMES)
def test_production_storage_from_dagster_database_url_in_each_form(
    cluster, tmp_path, monkeypatch, name
):
    """Production's dagster.yaml (the template, unchanged) reads DAGSTER_DATABASE_URL in
    any form libpq accepts; what Dagster hands to run processes keeps the variable's name,
    never the password."""
    conninfo = forms(cluster, DAGSTER)[name].conninfo
    monkeypatch.setenv("DAGSTER_DATABASE_URL", conninfo)
    home = write_home(tmp_path / "home")
    written = yaml.safe_load((home / "dagster.yaml").read_text())["storage"]["custom"]
    assert written["config"] == {"connection_string": {"env": "DAGSTER_DATABASE_URL"}}
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs_count() == 0
        shipped = serialize_value(instance.get_ref())
    assert "DAGSTER_DATABASE_URL" in shipped
    assert PASSWORD not in shipped and quote(PASSWORD, safe="") not in shipped
    assert storage_url(home) == sqlalchemy_url(conninfo)


def test_the_portal_database_is_recognised_through_a_socket_or_tcp(cluster):
    """localhost, 127.0.0.1, ::1, no host and a socket folder are all this machine (a
    portal reached through one and a storage through another is still refused)."""
    tcp = f"postgresql://{USERINFO}@127.0.0.1:{cluster.port}/{PORTAL}"
    for storage in (
        f"host={cluster.socket_dir} port={cluster.port} dbname={PORTAL}",
        f"postgresql://[::1]:{cluster.port}/{PORTAL}",
        f"postgresql:///{PORTAL}?port={cluster.port}",
        f"hostaddr=127.0.0.1,127.0.0.1 port=1,{cluster.port} dbname={PORTAL}",
    ):
        with pytest.raises(SettingsError, match="is the portal database"):
            refuse_portal_storage(sqlalchemy_url(storage), tcp)
    refuse_portal_storage(sqlalchemy_url(f"postgresql:///{DAGSTER}?port={cluster.port}"), tcp)


@pytest.mark.parametrize("name", FORM_NAMES)
def test_the_drill_gets_each_form_with_its_password_in_the_passfile(cluster, tmp_path, name):
    form = forms(cluster, PORTAL)[name]
    clean, line = split_password(form.conninfo)
    params = conninfo_to_dict(clean)
    assert "password" not in params and PASSWORD not in clean
    assert (params.get("host", ""), params.get("port"), params["user"], params["dbname"]) == (
        form.host,
        form.port,
        ROLE,
        PORTAL,
    )
    assert line == r"*:*:conn_portal:mm/jobs@drill\:1?:p@ss\:w/rd?"
    # libpq finds the password in a file holding that line, for that very string.
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{line}\n")
    passfile.chmod(0o600)
    with psycopg.connect(clean, passfile=str(passfile)) as conn:
        assert _who(conn) == (PORTAL, ROLE, _timeout(name))
    # And the drill's own pipe, pg_dump | pg_restore, logs in with it at both ends.
    drill = RestoreDrill(pg_bin_dir=str(Path(cluster.server.bin("pg_dump")).parent))
    with connect(cluster.server.url(PORTAL)) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None
    scratch = make_conninfo(form.conninfo, dbname=SCRATCH)
    drill.pipe(
        drill.tools_for(int(row[0])),
        ["--format=custom", f"--dbname={form.conninfo}"],
        ["--exit-on-error", "--clean", "--if-exists", f"--dbname={scratch}"],
    )
    with connect(cluster.server.url(SCRATCH)) as conn:
        assert conn.execute("SELECT count(*) FROM drilled").fetchone() == (1,)


def test_the_drill_leaves_strings_without_a_password_alone():
    for conninfo in ("portal", "postgresql:///portal?host=/run/postgresql", "dbname=portal"):
        assert split_password(conninfo) == (conninfo, None)


@pytest.mark.parametrize(
    "value", ["postgresql://u:line1%0Aline2@h/db", "host=h dbname=db user=u password='a\rb'"]
)
def test_a_password_the_passfile_cannot_carry_is_refused_by_name(value):
    with pytest.raises(ValueError, match="line break in its password") as err:
        split_password(value)
    assert "line1" not in "".join(traceback.format_exception(err.value))


def test_a_malformed_drill_string_does_not_show_its_password():
    value = "postgresql://u:s3cret%zz@h/db"
    with pytest.raises(ValueError) as err:
        split_password(value)
    assert "s3cret" not in "".join(traceback.format_exception(err.value))


@pytest.mark.parametrize(
    "value",
    [
        "postgresql:///portal",  # no host: libpq's default socket
        "postgres://",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/portal",
        "postgresql:///portal?host=/var/run/postgresql",
        "postgresql://u:p%40ss%3Aw%2Frd%3F@db.example:6543/portal?sslmode=require",
        "postgresql://u@[2001:db8::1]:5432/portal?target_session_attrs=read-write",
        "postgresql://h1:5432,h2:5433/portal?target_session_attrs=primary",
        "postgresql://h1,h2/portal?port=5432",
        "postgresql://u@ep-x.neon.tech/portal?sslmode=verify-full&options=endpoint%3Dep-x",
        "host=db.example dbname=portal user=jobs password='a b\\'c' sslmode=require",
        "host=/var/run/postgresql dbname=portal",
        "hostaddr=10.0.0.1,10.0.0.2 port=5432,5433 dbname=portal",
        "host=@abstract dbname=portal",
    ],
)
def test_every_form_libpq_accepts_is_a_valid_setting(value):
    for name in ("DATABASE_URL", "DATABASE_DIRECT_URL"):
        assert getattr(Settings.from_env({name: value}), name.lower()) == value


@pytest.mark.parametrize(
    "value",
    [
        "mysql://admin:s3cret@db/portal",
        "postgresql+psycopg2://admin:s3cret@db/portal",
        "postgresql://admin:s3cret@db:notaport/portal",
        "postgresql://admin:s3cret@db:0/portal",
        "postgresql://admin:s3cret@db:70000/portal",
        "postgresql://admin:s3c%zzret@db/portal",  # a bad percent-encoding
        "postgresql://admin:s3c/ret@db/portal",  # an unencoded / in the password
        "postgresql://admin:s3c@ret@db/portal",  # an unencoded @ in the password
        "postgresql://admin:s3cret@db/portal?nosuch=1",
        "postgresql://admin:s3cret@[::1/portal",
        "host=db password=s3c ret dbname=portal",  # an unquoted space
        "host=db dbname=portal password='s3cret",
        "host=h1,h2,h3 port=1,2 password=s3cret",
        "host=h1,h2 hostaddr=10.0.0.1 password=s3cret",
    ],
)
def test_a_malformed_string_names_the_setting_and_hides_the_password(value):
    for name in ("DATABASE_URL", "DATABASE_DIRECT_URL"):
        with pytest.raises(SettingsError) as err:
            Settings.from_env({name: value})
        message = str(err.value)
        assert message.startswith(f"{name} (value hidden) ")
        assert "postgresql://user:password@host:port/dbname" in message  # the hint
        shown = "".join(traceback.format_exception(err.value))
        assert "s3c" not in shown and "ret@" not in shown
