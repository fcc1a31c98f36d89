"""The two local stacks, as processes for the one supervisor (mm_orchestration.local.supervisor).

- `Topology` (`mm-jobs prod-local`): the production shape on one machine, the code location
  served on its own by `dagster api grpc`, with the daemon and the console (`mm-jobs
  console`: Dagster's webserver behind our identity, roles and audit front) reaching it over
  gRPC. Three processes that fail and restart independently, as they do under systemd or in
  Kubernetes: a crashed code server makes the location unavailable without taking the
  console or the schedules' state with it.
- `DevConsole` (`mm-jobs dev`): the same three, with `dagster code-server start` as the code
  server, which reloads the code when the console's Reload asks (as `dagster dev` does).
  `dagster dev` itself cannot serve its webserver behind our front, so it is not used.

Either code server is asked over gRPC whether it still serves (`grpc_answers`), and is
restarted by the supervisor when it stops answering. `dagster code-server start` holds the
port but serves through a `dagster api grpc` child it starts; when that child dies (killed,
out of memory) it never starts another, and stays alive answering every call with an
error, so the console could not load the code location and no run could start.
"""

from __future__ import annotations

import functools
import signal
from dataclasses import dataclass
from pathlib import Path

from mm_orchestration.local.supervisor import (
    PROBE_TIMEOUT_SECONDS,
    Command,
    Supervisor,
    executable,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = PROJECT_ROOT / "deploy" / "workspace.yaml"
LOCATION = "mm_orchestration"
COMPONENTS = ("code-server", "daemon", "webserver")


def commands(host: str, grpc_port: int, web_port: int, dev: bool = False) -> dict[str, list[str]]:
    """The command line of each process (the systemd units and the image run the same).
    `dev`: the code server reloads the code on request (`dagster code-server start`)."""
    if dev:
        code_server = [
            executable("dagster"), "code-server", "start", "--module-name", "mm_orchestration",
            "--location-name", LOCATION, "--log-format", "json", "--host", host,
            "--port", str(grpc_port),
        ]  # fmt: skip
        return {**commands(host, grpc_port, web_port), "code-server": code_server}
    return {
        "code-server": [
            executable("dagster"),
            "api",
            "grpc",
            "--module-name",
            "mm_orchestration",
            "--location-name",
            LOCATION,
            # Dagster's own JSON lines (the keys joblog.py writes too).
            "--log-format",
            "json",
            "--host",
            host,
            "--port",
            str(grpc_port),
        ],  # fmt: skip
        "daemon": [
            executable("dagster-daemon"),
            "run",
            "--log-format",
            "json",
            "-w",
            str(WORKSPACE),
        ],  # fmt: skip
        "webserver": [
            executable("mm-jobs"),
            "console",
            "--host",
            host,
            "--port",
            str(web_port),
            "-w",
            str(WORKSPACE),
        ],  # fmt: skip
    }


# Dagster's gRPC API (its api.proto): `Ping` is answered by the server that holds the code,
# so through `dagster code-server start` it is answered by the child that really serves.
# Called by its wire name with an empty request (proto3: every field at its default), so no
# Dagster module is imported here.
PING = "/api.DagsterApi/Ping"


def grpc_answers(host: str, port: int, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether the code server on `host:port` answers Dagster's Ping within `timeout`."""
    import grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(PING)(b"", timeout=timeout)
        except grpc.RpcError:
            return False
    return True


@dataclass
class Topology(Supervisor):
    """The three production processes, sharing one environment and one DAGSTER_HOME."""

    grpc_port: int = 4266
    web_port: int = 3000
    dev: bool = False

    def commands(self) -> dict[str, Command]:
        argv = commands(self.host, self.grpc_port, self.web_port, self.dev)
        ready = {"code-server": self.grpc_port, "webserver": self.web_port}
        stop = {name: signal.SIGTERM for name in COMPONENTS}
        if self.dev:
            # The reloading code server's graceful stop waits for its run workers, which
            # the supervisor has already asked to cancel and waited for; a worker stuck in
            # a call (SendGrid not answering) would hold it until the kill, and the whole
            # stop past its 15 s. It keeps no state of its own: stopped at once.
            stop["code-server"] = signal.SIGKILL
        # The webserver and the daemon reach the code only through the code server, so
        # one that is alive but does not answer is as good as dead.
        answers = {"code-server": functools.partial(grpc_answers, self.host, self.grpc_port)}
        return {
            name: Command(argv[name], ready.get(name), stop[name], answers.get(name))
            for name in COMPONENTS
        }

    @property
    def process_env(self) -> dict[str, str]:
        return {
            **super().process_env,
            "MM_CODE_SERVER_HOST": self.host,
            "MM_CODE_SERVER_PORT": str(self.grpc_port),
            # `dagster code-server start` (dev) starts `dagster api grpc` itself: click reads
            # that child's --log-format from this variable.
            "DAGSTER_CLI_API_GRPC_LOG_FORMAT": "json",
        }


@dataclass
class DevConsole(Topology):
    """`mm-jobs dev`: the three processes, the code server reloading on request."""

    dev: bool = True
