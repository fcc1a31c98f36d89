"""The tools the jobs start (pg_dump, pg_restore, psql, ...): run one, or a pipeline of them,
and when something fails, say which tool failed first, how, and in its own words.

In `pg_dump | pg_restore`, a pg_restore that refuses the dump exits, and pg_dump, writing
into a pipe nobody reads any more, is then killed by SIGPIPE with nothing on stderr. That
second failure is a consequence; the error names the first one, with its stderr's last lines.

"First" is causal, not by the clock: a failure travels down a pipeline as an early end of
input and up it as a broken pipe. So the cause is the most upstream tool that failed other
than of a broken pipe. (Exit order would mislead: a pg_dump that cannot connect closes its
output, and pg_restore has failed on the empty input before pg_dump has finished exiting.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

TAIL_LINES = 15
TAIL_CHARS = 2000
# How long a stopped tool gets to exit after SIGTERM (a timeout, an interrupt) before SIGKILL.
STOP_GRACE_SECONDS = 5.0


class ToolFailed(RuntimeError):
    """A tool exited non-zero, was killed by a signal, timed out or could not start.

    `tool` is the one that failed first; `then` lists the failures that followed from it.
    """

    def __init__(
        self,
        tool: str,
        reason: str,
        stderr: str = "",
        returncode: int | None = None,
        then: Sequence[str] = (),
    ) -> None:
        self.tool = tool
        self.reason = reason
        self.stderr = stderr
        self.returncode = returncode
        self.then = list(then)
        message = f"{tool} {reason}"
        if stderr:
            message += f": {stderr}"
        elif returncode is not None:
            message += " (nothing on its stderr)"
        if self.then:
            message += f" [then {'; '.join(self.then)}]"
        super().__init__(message)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """Run one tool; its stdout, or ToolFailed naming it with its status and stderr."""
    return pipeline([argv], env=env, timeout=timeout)


def pipeline(
    commands: Sequence[Sequence[str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """`a | b | ...` without a shell: the last tool's stdout, or ToolFailed for the tool that
    failed first. `timeout` bounds the whole pipeline; every tool still running then is
    stopped."""
    if not commands:
        raise ValueError("a pipeline needs at least one command")
    names = [Path(argv[0]).name for argv in commands]
    deadline = None if timeout is None else time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in commands]
        out = stack.enter_context(tempfile.TemporaryFile())
        procs: list[subprocess.Popen[bytes]] = []
        try:
            upstream: IO[bytes] | int = subprocess.DEVNULL
            for i, argv in enumerate(commands):
                last = i == len(commands) - 1
                try:
                    proc = subprocess.Popen(
                        list(argv),
                        stdin=upstream,
                        stdout=out if last else subprocess.PIPE,
                        stderr=errs[i],
                        env=None if env is None else dict(env),
                    )
                except OSError as exc:
                    raise ToolFailed(
                        names[i], f"could not be started ({exc.strerror}: {argv[0]})"
                    ) from None
                finally:
                    # Ours closed: when a reader dies, its writer gets SIGPIPE instead of
                    # blocking on a full pipe that this process still holds open.
                    if not isinstance(upstream, int):
                        upstream.close()
                procs.append(proc)
                upstream = proc.stdout if proc.stdout is not None else subprocess.DEVNULL
            finished = _wait(procs, deadline)
            running = [i for i, proc in enumerate(procs) if proc.poll() is None]
        finally:
            _stop(procs)
        if not finished:
            first = running[0]
            raise ToolFailed(
                names[first],
                f"timed out after {timeout:g} s and was stopped",
                _tail(errs[first]),
                procs[first].returncode,
                [f"{names[i]} was still running too" for i in running[1:]],
            )
        codes = [p.returncode for p in procs]
        failed = [i for i, code in enumerate(codes) if code != 0]
        if failed:
            tails = {i: _tail(errs[i]) for i in failed}
            causes = [i for i in failed if not _broken_pipe(i, codes[i], tails[i], len(procs))]
            cause = (causes or failed)[0]
            reason = describe(codes[cause])
            if not causes:  # only writers whose reader stopped early, having succeeded
                reason += f" ({names[cause + 1]} stopped reading before the end)"
            raise ToolFailed(
                names[cause],
                reason,
                tails[cause],
                codes[cause],
                [
                    f"{names[i]} {describe(codes[i])}"
                    + (" (its reader had stopped reading)" if i not in causes else "")
                    for i in failed
                    if i != cause
                ],
            )
        out.seek(0)
        return out.read().decode(errors="replace")


def describe(returncode: int) -> str:
    """`exited with status 1`, `was killed by SIGPIPE`."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def missing_executables(folder: Path, names: Sequence[str]) -> list[str]:
    """Which of `names` are not executable files in `folder`."""
    return [n for n in names if not (folder / n).is_file() or not os.access(folder / n, os.X_OK)]


def _broken_pipe(stage: int, code: int, stderr: str, stages: int) -> bool:
    """A writer that failed because its reader went away: a consequence, never the cause."""
    if stage == stages - 1:
        return False
    sigpipe = int(signal.SIGPIPE)
    return code in (-sigpipe, 128 + sigpipe) or "broken pipe" in stderr.lower()


def _wait(procs: Sequence[subprocess.Popen[bytes]], deadline: float | None) -> bool:
    """Wait for every process until `deadline`; False if one is still running then."""
    for proc in procs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            return False
    return True


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop whatever is still running (a timeout, an interrupt, a tool that would not start)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(file: IO[bytes]) -> str:
    """The last lines a tool wrote to its stderr file."""
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - 4 * TAIL_CHARS))
    text = file.read().decode(errors="replace").strip()
    lines = text.splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]
