"""One supervisor for the local stacks: `mm-jobs dev` (one `dagster dev`) and `mm-jobs
prod-local` (code server, daemon and webserver) start, watch and stop their processes here.

A stop is what a person or a process manager expects, whichever signal asks for it: Ctrl-C
in a terminal (SIGINT to the whole foreground group), SIGTERM from systemd, Docker or an
IDE (to the main process or its group), SIGHUP when the terminal closes, and whatever signal
dispositions the stack inherited (a background job of a script starts with SIGINT ignored).
In that order it

1. cancels the runs in flight through Dagster's run launcher, so an interrupted run ends
   CANCELED, not FAILED, and alerts nobody (queued runs stay queued and start next time);
2. signals every process group it started and waits, then kills what is left;
3. kills any descendant that escaped its group (this process is their subreaper, so an
   orphaned code server or run worker comes back to it instead of to init).

Every process runs in a session of its own, so a terminal's signals reach only this one.

While the stack runs, a process that exits is started again after RESTART_DELAY_SECONDS,
and so is one that is alive but no longer answers (its command's `answers` probe, asked
every PROBE_INTERVAL_SECONDS, failing for UNANSWERED_SECONDS): `dagster code-server start`
serves through a `dagster api grpc` child it never restarts, so when that child dies the
server's own process lives on, useless.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mm_orchestration.local.claims import held_here
from mm_orchestration.monitoring.process_log import python_path
from mm_orchestration.platform.processes import describe

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RESTART_DELAY_SECONDS = 5.0  # as RestartSec= in deploy/systemd
# Together well inside the 15 s a stop may take, with the database's own stop after them.
CANCEL_WAIT_SECONDS = 4.0  # for in-flight runs to record their cancellation
FIRST_TO_STOP = "daemon"  # stop_all: the process that launches runs
STOP_WAIT_SECONDS = 4.0  # for processes to exit before they are killed
# A process with a probe is asked this often whether it still does its work, and killed (to
# be restarted) once it has not answered for UNANSWERED_SECONDS: several probes in a row,
# so that one slow answer on a loaded machine is not taken for a dead server.
PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 2.0
UNANSWERED_SECONDS = 10.0
_PR_SET_CHILD_SUBREAPER = 36
# The claim (mm_orchestration.local.claims) a running local stack holds in its data folder
# and in its Dagster instance's folder, beside the pid file: one stack per folder.
STACK_LOCK = "stack.lock"


class StopRequested(Exception):
    """A stop signal arrived while the stack was still starting."""


@dataclass(frozen=True)
class Command:
    """One supervised process: its command line, the port that says it is ready, the
    signal that stops it gracefully, and the probe that says it still does its work (None:
    being alive is enough)."""

    argv: list[str]
    ready_port: int | None = None
    stop_signal: int = signal.SIGTERM
    answers: Callable[[], bool] | None = None


def say(message: str) -> None:
    """Print, unless the terminal is gone (after SIGHUP a write fails; the stop goes on)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"mm-jobs: {message}", flush=True)


def _default_signals() -> None:
    # Children start with default dispositions, whatever this process inherited: Dagster
    # maps SIGTERM to whatever SIGINT does, and an ignored SIGINT would make it ignore both.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Catch SIGINT, SIGTERM and SIGHUP for the life of the block, whatever was inherited.

    Until `supervise` takes over, the first signal raises StopRequested where the code is,
    so the caller's cleanup (PostgreSQL's stop) runs.
    """
    asked = {"stop": False}

    def handler(signum: int, frame: object) -> None:
        if not asked["stop"]:
            asked["stop"] = True
            say(f"{signal.Signals(signum).name}: stopping")
            raise StopRequested

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _become_subreaper() -> None:
    # Only once the embedded PostgreSQL is up: pg_ctl leaves its server to init, and the
    # server must not come back to us, or the last sweep would kill it before its clean stop.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@dataclass
class Supervisor:
    """Named processes sharing one environment and one DAGSTER_HOME."""

    dagster_home: Path
    env: Mapping[str, str]
    host: str = "127.0.0.1"
    log_dir: Path | None = None  # None: the processes write to this terminal
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def commands(self) -> dict[str, Command]:
        """The processes, in start order (each stack names its own)."""
        return {}

    @property
    def process_env(self) -> dict[str, str]:
        # PYTHONTZPATH empty: every process (the daemon too, which never imports our
        # package) reads time zones from the pinned tzdata, never the OS's files.
        # PYTHONPATH: every process, and every run worker a code server starts, writes
        # JSON lines from its first instruction (monitoring/process_log.py).
        return {
            **self.env,
            "DAGSTER_HOME": str(self.dagster_home),
            "PYTHONTZPATH": "",
            "PYTHONPATH": python_path(self.env.get("PYTHONPATH")),
        }

    def start(self, name: str, timeout: float = 120.0) -> subprocess.Popen[bytes]:
        """Start one process; one with a ready port counts as started once it serves."""
        _become_subreaper()
        command = self.commands()[name]
        if command.ready_port is not None and port_open(self.host, command.ready_port):
            raise RuntimeError(
                f"{name}: {self.host}:{command.ready_port} is already in use by another "
                "process; stop it, or choose another port (--port, --grpc-port)"
            )
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            output = self._logs.get(name) or open(self.log_dir / f"{name}.log", "ab")
            self._logs[name] = output
        process = subprocess.Popen(
            command.argv,
            env=self.process_env,
            cwd=self.dagster_home,  # not the project root: its dagster.yaml is a template
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its run workers live and die with it
            preexec_fn=_default_signals,
        )
        self.processes[name] = process
        self._record_pids()
        if command.ready_port is not None:
            self._wait_for_port(name, process, command.ready_port, timeout)
        return process

    @property
    def _pidfile(self) -> Path:
        return self.dagster_home / "stack.pids"

    def _record_pids(self) -> None:
        pids = [os.getpid(), *(p.pid for p in self.processes.values())]
        self._pidfile.write_text("\n".join(map(str, pids)) + "\n")

    def _stop_leftovers(self) -> None:
        """Stop the process groups of an earlier stack on this DAGSTER_HOME whose supervisor
        died without stopping them (SIGKILL): two daemons on one instance fight, and an old
        console would hold the port."""
        import psutil

        try:
            supervisor, *groups = (int(x) for x in self._pidfile.read_text().split())
        except (OSError, ValueError):
            return
        if supervisor == os.getpid():
            return  # ours
        # While this process holds the instance's claim no other supervisor is in charge of
        # it, whatever now has the recorded pid; without the claim (a supervisor of its own
        # in a test), one is in charge while that pid is a live process of this Python,
        # not one that reused the pid since.
        if not held_here(self.dagster_home / STACK_LOCK) and _alive_here(supervisor):
            return
        for pgid in groups:
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if _dagster_process(psutil.Process(pgid)):  # not a pid reused since
                    os.killpg(pgid, signal.SIGKILL)
                    say(f"stopped process group {pgid} of a stack that died")
        self._pidfile.unlink(missing_ok=True)

    def start_all(self) -> None:
        self._stop_leftovers()
        # Runs left STARTED by a stack or an `mm-jobs run` that died (SIGKILL, power loss)
        # would hold their job's queue slot for good: they are canceled first.
        with contextlib.suppress(Exception):
            cancel_runs_in_flight(self.dagster_home, self.process_env, terminate=False)
        for name in self.commands():
            self.start(name)

    def stop(self, name: str, sig: int | None = None, timeout: float = STOP_WAIT_SECONDS) -> None:
        """Signal one process's group (its graceful signal unless `sig`); SIGKILL the group if
        the process outlives `timeout`."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        self._signal_group(process, sig or self.commands()[name].stop_signal)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop in {timeout:.0f} s: killed")
        self._signal_group(process, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        """Stop the daemon, cancel the runs in flight, stop every other process (the last
        started first, all within STOP_WAIT_SECONDS), then kill any descendant left behind.
        The daemon goes first: it launches nothing more once the stop has begun, and its
        exit (it finishes the tick each of its threads is in: seconds on a loaded machine)
        overlaps the wait for the runs' cancellation instead of following it."""
        began = time.monotonic()
        running = list(self.processes.items())
        first = [(name, process) for name, process in running if name == FIRST_TO_STOP]
        for name, process in first:
            self._signal_group(process, self.commands()[name].stop_signal)
        with contextlib.suppress(Exception):  # a stop must go on whatever the instance says
            cancel_runs_in_flight(self.dagster_home, self.process_env, terminate=True)
        for name, process in reversed(running):
            if name != FIRST_TO_STOP:
                self._signal_group(process, self.commands()[name].stop_signal)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for name, process in reversed(running):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in {STOP_WAIT_SECONDS:.0f} s: killed")
            self._signal_group(process, signal.SIGKILL)
            process.wait()
        self.processes.clear()
        self._pidfile.unlink(missing_ok=True)
        kill_descendants()
        with contextlib.suppress(Exception):  # what no worker could record any more
            cancel_runs_in_flight(self.dagster_home, self.process_env, terminate=False)
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if running:
            names = ", ".join(name for name, _ in running)
            say(f"stopped {names} in {time.monotonic() - began:.1f} s")

    def supervise(self, restart_delay: float = RESTART_DELAY_SECONDS) -> int:
        """Keep every process up until a stop signal, restarting any that exits; then stop
        everything. Returns 0."""
        stopping = {"now": False}

        def request_stop(signum: int, frame: object) -> None:
            if not stopping["now"]:
                say(f"{signal.Signals(signum).name}: stopping")
            stopping["now"] = True

        for sig in STOP_SIGNALS:
            signal.signal(sig, request_stop)
        died: dict[str, float] = {}
        probes = _Probes()
        try:
            while not stopping["now"]:
                time.sleep(0.2)
                for name, command in self.commands().items():
                    if stopping["now"]:
                        break
                    process = self.processes.get(name)
                    if process is not None and process.poll() is None:
                        if probes.silent_too_long(name, process, command):
                            self._kill_unanswering(name, process, probes.silence(name))
                        continue
                    probes.forget(name)
                    if name not in died:
                        how = describe(process.returncode) if process is not None else "is gone"
                        say(f"{name} {how}; restarting in {restart_delay:.0f} s")
                        died[name] = time.monotonic()
                    elif time.monotonic() - died[name] >= restart_delay:
                        del died[name]
                        try:
                            self.start(name)
                        except RuntimeError as exc:
                            say(str(exc))
            return 0
        finally:
            self.stop_all()

    def _kill_unanswering(
        self, name: str, process: subprocess.Popen[bytes], silence: float
    ) -> None:
        """Kill a process that is alive but has stopped answering; the supervise loop then
        restarts it as it restarts one that died. The process alone, not its group: the runs
        a code server started finish on their own (as systemd's KillMode=process stops the
        production code server)."""
        say(f"{name} (pid {process.pid}) has not answered for {silence:.0f} s: killing it")
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    def _log_tail(self, name: str, lines: int = 15) -> str:
        """The end of a process's own output, where its real error is (when it has a log)."""
        if self.log_dir is None or not (self.log_dir / f"{name}.log").exists():
            return " (its output is above)"
        text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        return ":\n" + "\n".join(text[-lines:])

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def _wait_for_port(
        self, name: str, process: subprocess.Popen[bytes], port: int, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(self.host, port):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} {describe(process.returncode)} before serving{self._log_tail(name)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not serve on {self.host}:{port} in {timeout} s")
            time.sleep(0.2)


class _Probes:
    """When each supervised process last answered its probe, and since when it has not."""

    def __init__(self) -> None:
        self._asked: dict[str, float] = {}
        self._silent_since: dict[str, float] = {}
        self._pids: dict[str, int] = {}

    def silent_too_long(
        self, name: str, process: subprocess.Popen[bytes], command: Command
    ) -> bool:
        """Ask `command`'s probe when it is due; True once it has gone unanswered for
        UNANSWERED_SECONDS (a restarted process starts with a clean slate)."""
        if command.answers is None:
            return False
        if self._pids.get(name) != process.pid:
            self.forget(name)
            self._pids[name] = process.pid
        now = time.monotonic()
        if now - self._asked.get(name, 0.0) < PROBE_INTERVAL_SECONDS:
            return False
        self._asked[name] = now
        if command.answers():
            self._silent_since.pop(name, None)
            return False
        since = self._silent_since.setdefault(name, now)
        return now - since >= UNANSWERED_SECONDS

    def silence(self, name: str) -> float:
        return time.monotonic() - self._silent_since.get(name, time.monotonic())

    def forget(self, name: str) -> None:
        for table in (self._asked, self._silent_since, self._pids):
            table.pop(name, None)


def kill_descendants() -> None:
    """SIGKILL every Dagster process still below this one: orphans come back to a subreaper.
    Only processes of this Python are touched (a PostgreSQL the caller stops itself is not)."""
    import psutil

    left = [p for p in psutil.Process().children(recursive=True) if _dagster_process(p)]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=2)


def _alive_here(pid: int) -> bool:
    """Whether `pid` is a live process of this Python (not a zombie, not a reused pid)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and _dagster_process(process)
    return False


def _dagster_process(process: Any) -> bool:
    """Whether a psutil process runs this Python (a Dagster process of ours)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return os.path.realpath(process.exe()) == os.path.realpath(sys.executable)
    return False


def cancel_runs_in_flight(dagster_home: Path, env: Mapping[str, str], terminate: bool) -> list[str]:
    """Cancel every starting or started run of this machine: the ones this stack's run
    launcher made, and the ones an `mm-jobs run` here is executing (they use the stack's
    PostgreSQL, which is about to stop). With `terminate`, ask each to stop (the launcher's
    termination, SIGTERM to the `mm-jobs run` process) and wait up to CANCEL_WAIT_SECONDS
    for them to record it; without, mark whatever is still unfinished and has no live
    process canceled (its worker is gone). Returns the run ids."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from mm_orchestration.platform import manual_run

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the instance's storage settings may come from the environment
    try:
        instance = DagsterInstance.from_config(str(dagster_home))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    with instance:
        active = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
        runs = [
            run
            for run in instance.get_runs(filters=RunsFilter(statuses=active))
            if ".dagster/grpc_info" in run.tags or manual_run.cli_process(run) is not None
        ]
        if not terminate:
            for run in runs:
                pid = manual_run.cli_process(run)
                if pid is None or not manual_run.is_alive(pid):
                    manual_run.cancel(
                        instance, run.run_id, env.get("DATABASE_URL"), "its process is gone"
                    )
            return [r.run_id for r in runs]
        for run in runs:
            pid = manual_run.cli_process(run)
            if pid is not None:
                if manual_run.is_alive(pid):
                    say(f"stopping `mm-jobs run` {pid} (run {run.run_id} of {run.job_name})")
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGTERM)
            elif run.status != DagsterRunStatus.CANCELING:
                say(f"canceling run {run.run_id} of {run.job_name}")
                with contextlib.suppress(Exception):
                    instance.run_launcher.terminate(run.run_id)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        pending = [r.run_id for r in runs]
        while pending and time.monotonic() < deadline:
            time.sleep(0.2)
            pending = [rid for rid in pending if not _finished(instance, rid)]
        return [r.run_id for r in runs]


def _finished(instance: Any, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is None or run.is_finished


def executable(name: str) -> str:
    return str(Path(sys.executable).with_name(name))
