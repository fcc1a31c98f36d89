"""One owner at a time for a local folder: a local stack's data folder and Dagster instance,
an embedded PostgreSQL's cluster.

A second `mm-jobs dev` in a folder whose stack is running must leave that stack alone, while
a start after a stack was killed outright (SIGKILL, a crash) must clean up what it left
behind. Telling the two apart by a recorded pid is a guess (the pid may be reused by an
unrelated process, and two starts at once would both see "nobody"). A claim is an exclusive
`flock` on a file in the folder instead, held for as long as its owner lives: the kernel
takes the lock atomically, so of two starts at the same moment one wins, and drops it when
the owner's process ends however it ends, so a free lock means a gone owner. The file also
says who holds it (pid, what it runs, where its console is) for the next comer's refusal.

The lock's descriptor is close-on-exec: the servers an owner starts (PostgreSQL, the Dagster
processes) never hold it, or a killed owner's leftovers would keep its folder claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

# How long a refused comer waits for the holder to have written who it is: the holder
# writes right after it takes the lock, so only a start that is itself racing waits.
_HOLDER_WRITE_SECONDS = 1.0

# The lock files this process holds, so that code of this process can tell "the owner is
# this process" from "another process owns it" (flock refuses a second descriptor even in
# the same process).
_HELD: set[Path] = set()


class FolderInUse(RuntimeError):
    """Another live process holds the claim; `holder` is what it recorded (pid, what it
    runs), empty when it has not said."""

    def __init__(self, lock_file: Path, holder: dict[str, Any]) -> None:
        self.lock_file = lock_file
        self.holder = holder
        pid = holder.get("pid")
        super().__init__(f"{lock_file.parent} is in use by process {pid or '(unknown)'}")

    @property
    def pid(self) -> int | None:
        pid = self.holder.get("pid")
        return pid if isinstance(pid, int) else None


class Claim:
    """An exclusive claim on the folder of `lock_file`, held from `take` to `release` (or
    to the end of this process)."""

    def __init__(self, lock_file: Path) -> None:
        self.lock_file = Path(lock_file).resolve()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self, **about: Any) -> Claim:
        """Claim the folder, recording `about` (JSON values) beside this process's pid; raise
        FolderInUse, with what the holder recorded, when another owner holds it. Taking a
        claim this object holds already is a no-op."""
        if self._fd is not None:
            return self
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(self.lock_file, read_holder(self.lock_file)) from None
        except BaseException:
            os.close(fd)
            raise
        # The file is kept, never deleted: a comer that opened it just before a delete would
        # lock a file nobody else can see, and two owners would both believe themselves alone.
        record = json.dumps({"pid": os.getpid(), **about}, default=str).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        _HELD.add(self.lock_file)
        return self

    def release(self) -> None:
        """Give the claim up (nothing when it is not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(self.lock_file)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # who held it is no longer true
        os.close(fd)  # closing the last descriptor drops the lock

    def __enter__(self) -> Claim:
        return self.take()

    def __exit__(self, *exc: object) -> None:
        self.release()


def held_here(lock_file: Path) -> bool:
    """Whether this process holds the claim of `lock_file` (through any Claim object)."""
    return Path(lock_file).resolve() in _HELD


def read_holder(lock_file: Path) -> dict[str, Any]:
    """What the holder of `lock_file` recorded, empty when it has not (yet) said."""
    deadline = time.monotonic() + _HOLDER_WRITE_SECONDS
    while True:
        try:
            text = Path(lock_file).read_text()
            holder = json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict) or time.monotonic() >= deadline:
            return holder if isinstance(holder, dict) else {}
        time.sleep(0.05)
