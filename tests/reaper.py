"""Stops what a test run leaves running when the run is stopped midway: its PostgreSQL
servers, the processes its tests started in sessions of their own, and the semaphores its
killed processes left.

Each server is stopped by the fixture that started it. A run stopped by Ctrl-C at the
wrong moment, or killed, never gets there, and its servers (daemonised by pg_ctl, in no
process group of the run) would run on, as `nobody` under root. The run's first process
(conftest) starts this with the run's temporary root. It waits for that process to end,
then stops every server whose data folder is under the root, with SIGQUIT (PostgreSQL's
immediate shutdown: the data is thrown away anyway). It kills the processes the tests
started in sessions of their own (stacks, consoles, stand-ins, nginx, Chromium: a Ctrl-C to
the run's group does not reach them, and a killed worker never stops them): every process
that carries the run's root in its environment (conftest sets PYTEST_DEBUG_TEMPROOT, and
what a test starts inherits it) or names a path in it on its command line. Then it
removes the multiprocessing semaphores (`/dev/shm/sem.mp-*`) made during the run that no
live process has open: the code servers make them for their run workers, and the tests
that kill a stack's process group outright (a lost container, a crash) kill Python's
resource tracker, which would have removed them, with it. Last, for a run that did not
pass, it deletes the PostgreSQL data folders and keeps the logs. Standard library only,
so that it costs a few milliseconds and no import of the project.

    python tests/reaper.py PID ROOT SINCE    (SINCE: the run's start, epoch seconds)
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# The workers may still be tearing down what their tests started when the run's first
# process ends (a Ctrl-C): they are given this long before what is left is stopped.
SECOND_LOOK_SECONDS = 5.0


def running_servers(root: Path) -> Iterator[int]:
    """The postmaster pids of the servers still running from data folders under `root`."""
    for pidfile in root.rglob("postmaster.pid"):
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            # A postmaster works in its data folder; a pid since reused by another process
            # does not, and is left alone.
            if Path(os.readlink(f"/proc/{pid}/cwd")) == pidfile.parent.resolve():
                yield pid
        except (OSError, ValueError, IndexError):
            continue


def stop_servers(root: Path) -> int:
    """Signal every server running under `root` to stop now; returns how many."""
    stopped = 0
    for pid in running_servers(root):
        try:
            os.kill(pid, signal.SIGQUIT)
            stopped += 1
        except ProcessLookupError:
            pass
    return stopped


def left_semaphores(since: float, shm: Path = Path("/dev/shm")) -> list[Path]:
    """The multiprocessing semaphores made since `since` (epoch seconds) that no live
    process maps. One made in the last second is left alone: its maker may be between
    creating and mapping it (sem_open does both in one call)."""
    now = time.time()
    found = {}
    for path in shm.glob("sem.mp-*"):
        try:
            made = path.stat().st_ctime
        except OSError:
            continue
        if since <= made <= now - 1:
            found[path.name] = path
    for maps in Path("/proc").glob("[0-9]*/maps"):
        if not found:
            break
        try:
            text = maps.read_text()
        except OSError:  # gone, or another user's process: its semaphores are not ours
            continue
        for name in [name for name in found if name in text]:
            del found[name]
    return list(found.values())


def processes_of_the_run(root: Path) -> list[int]:
    """The live processes, other than this one and PostgreSQL's (stopped by
    `stop_servers`), whose environment names `root` (or a folder in it) as pytest's
    temporary root, or whose command line names a path in `root` (nginx writes its title
    over its environment; its prefix is a temporary folder of the run)."""
    marker = f"PYTEST_DEBUG_TEMPROOT={root}".encode()
    in_root = f"{root}/".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            if (proc / "comm").read_text().strip() == "postgres":
                continue
            entries = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if in_root in command or any(
            entry == marker or entry.startswith(marker + b"/") for entry in entries
        ):
            found.append(int(proc.name))
    return found


def wait_for_exit(pid: int) -> None:
    """Block until process `pid` has ended (a pidfd: no polling, no pid reuse race)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def remove_clusters(root: Path, timeout: float = 15.0) -> None:
    """Delete the PostgreSQL data folders under `root` once no server runs from them: the
    bulk of a stopped run's files (2 GB in RAM on five workers), where its logs, kept for
    a look, are a few MB."""
    deadline = time.monotonic() + timeout
    while any(True for _ in running_servers(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    # A data folder has PG_VERSION at its top (and one in each database under base/).
    clusters = [v.parent for v in root.rglob("PG_VERSION") if v.parent.parent.name != "base"]
    for data in clusters:
        if not (data / "postmaster.pid").exists():
            shutil.rmtree(data, ignore_errors=True)


def main(pid: int, root: Path, started: float) -> None:
    wait_for_exit(pid)
    if root.exists():  # a run that passed has removed it; else its workers may be tearing down
        time.sleep(SECOND_LOOK_SECONDS)
    stop_servers(root)
    for leftover in processes_of_the_run(root):
        try:
            os.kill(leftover, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if root.exists():
        remove_clusters(root)
    for semaphore in left_semaphores(started):
        try:
            semaphore.unlink()
        except OSError:  # gone meanwhile, or another user's
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))
