"""The production shape on one machine: the code location served on its own by
`dagster api grpc`, with the daemon and the webserver reaching it over gRPC.

Three processes that fail and restart independently, as they do under systemd or in
Kubernetes: a crashed code server makes the location unavailable without taking the
console or the schedules' state with it. `mm-jobs prod-local` supervises them; tests
drive them one by one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = PROJECT_ROOT / "deploy" / "workspace.yaml"
LOCATION = "mm_orchestration"
COMPONENTS = ("code-server", "daemon", "webserver")
RESTART_DELAY_SECONDS = 5.0  # as RestartSec= in deploy/systemd


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def commands(host: str, grpc_port: int, web_port: int) -> dict[str, list[str]]:
    """The command line of each process (the systemd units and the image run the same)."""
    return {
        "code-server": [
            _bin("dagster"),
            "api",
            "grpc",
            "--module-name",
            "mm_orchestration",
            "--location-name",
            LOCATION,
            "--host",
            host,
            "--port",
            str(grpc_port),
        ],  # fmt: skip
        "daemon": [_bin("dagster-daemon"), "run", "-w", str(WORKSPACE)],
        "webserver": [
            _bin("dagster-webserver"),
            "-h",
            host,
            "-p",
            str(web_port),
            "-w",
            str(WORKSPACE),
        ],  # fmt: skip
    }


def _default_signals() -> None:
    # Dagster maps SIGTERM to whatever SIGINT does; a parent started in the background has
    # SIGINT ignored, and the child would then ignore SIGTERM too.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Topology:
    """The three processes, sharing one environment and one DAGSTER_HOME."""

    dagster_home: Path
    env: Mapping[str, str]
    host: str = "127.0.0.1"
    grpc_port: int = 4266
    web_port: int = 3000
    log_dir: Path | None = None  # None: the processes write to this terminal
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    @property
    def process_env(self) -> dict[str, str]:
        return {
            **self.env,
            "DAGSTER_HOME": str(self.dagster_home),
            "MM_CODE_SERVER_HOST": self.host,
            "MM_CODE_SERVER_PORT": str(self.grpc_port),
        }

    def start(self, name: str, timeout: float = 90.0) -> subprocess.Popen[bytes]:
        """Start one process; the code server counts as started once it serves."""
        command = commands(self.host, self.grpc_port, self.web_port)[name]
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            output = self._logs.get(name) or open(self.log_dir / f"{name}.log", "ab")
            self._logs[name] = output
        process = subprocess.Popen(
            command,
            env=self.process_env,
            cwd=self.dagster_home,  # not the project root: its dagster.yaml is a template
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,  # its run workers live and die with it
            preexec_fn=_default_signals,
        )
        self.processes[name] = process
        if name == "code-server":
            self._wait_for_port(name, process, self.grpc_port, timeout)
        elif name == "webserver":
            self._wait_for_port(name, process, self.web_port, timeout)
        return process

    def start_all(self) -> None:
        for name in COMPONENTS:
            self.start(name)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal one process and its children; SIGKILL if it outlives `timeout`."""
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        # The console and the daemon first, so nothing launches into a dying code server.
        for name in reversed(COMPONENTS):
            self.stop(name)
        for log in self._logs.values():
            log.close()
        self._logs.clear()

    def supervise(self, restart_delay: float = RESTART_DELAY_SECONDS) -> int:
        """Keep every process up until SIGINT/SIGTERM, restarting any that exits."""
        stopping = False

        def request_stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        died: dict[str, float] = {}
        try:
            while not stopping:
                time.sleep(0.5)
                for name in COMPONENTS:
                    process = self.processes.get(name)
                    if process is not None and process.poll() is None:
                        continue
                    if name not in died:
                        code = process.returncode if process is not None else None
                        print(
                            f"mm-jobs: {name} exited ({code}); restarting in {restart_delay:.0f} s"
                        )
                        died[name] = time.monotonic()
                    elif time.monotonic() - died[name] >= restart_delay and not stopping:
                        del died[name]
                        try:
                            self.start(name)
                        except RuntimeError as exc:
                            print(f"mm-jobs: {exc}")
            return 0
        finally:
            self.stop_all()

    def _wait_for_port(
        self, name: str, process: subprocess.Popen[bytes], port: int, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(self.host, port):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} before serving")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not serve on {self.host}:{port} in {timeout} s")
            time.sleep(0.2)
