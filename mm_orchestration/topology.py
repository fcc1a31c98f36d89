"""The two local stacks, as processes for the one supervisor (mm_orchestration.supervisor).

- `Topology` (`mm-jobs prod-local`): the production shape on one machine, the code location
  served on its own by `dagster api grpc`, with the daemon and the webserver reaching it over
  gRPC. Three processes that fail and restart independently, as they do under systemd or in
  Kubernetes: a crashed code server makes the location unavailable without taking the
  console or the schedules' state with it.
- `DevConsole` (`mm-jobs dev`): one `dagster dev` (webserver, daemon and a code server it
  reloads from the console when the code changes).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from mm_orchestration.supervisor import Command, Supervisor, executable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = PROJECT_ROOT / "deploy" / "workspace.yaml"
LOCATION = "mm_orchestration"
COMPONENTS = ("code-server", "daemon", "webserver")


def commands(host: str, grpc_port: int, web_port: int) -> dict[str, list[str]]:
    """The command line of each process (the systemd units and the image run the same)."""
    return {
        "code-server": [
            executable("dagster"),
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
        "daemon": [executable("dagster-daemon"), "run", "-w", str(WORKSPACE)],
        "webserver": [
            executable("dagster-webserver"),
            "-h",
            host,
            "-p",
            str(web_port),
            "-w",
            str(WORKSPACE),
        ],  # fmt: skip
    }


@dataclass
class Topology(Supervisor):
    """The three production processes, sharing one environment and one DAGSTER_HOME."""

    grpc_port: int = 4266
    web_port: int = 3000

    def commands(self) -> dict[str, Command]:
        argv = commands(self.host, self.grpc_port, self.web_port)
        ready = {"code-server": self.grpc_port, "webserver": self.web_port}
        return {name: Command(argv[name], ready.get(name)) for name in COMPONENTS}

    @property
    def process_env(self) -> dict[str, str]:
        return {
            **super().process_env,
            "MM_CODE_SERVER_HOST": self.host,
            "MM_CODE_SERVER_PORT": str(self.grpc_port),
        }


@dataclass
class DevConsole(Supervisor):
    """`dagster dev` on the project's workspace: the console, the daemon and a code server."""

    web_port: int = 3000

    def commands(self) -> dict[str, Command]:
        argv = [
            executable("dagster"), "dev", "-h", self.host, "-p", str(self.web_port),
            "-w", str(PROJECT_ROOT / "workspace.yaml"),
        ]  # fmt: skip
        # dagster dev shuts its webserver, daemon and code server down cleanly on SIGINT.
        return {"console": Command(argv, self.web_port, stop_signal=signal.SIGINT)}

    @property
    def process_env(self) -> dict[str, str]:
        # `dagster dev` warns at every start that `dg dev` supersedes it; the project keeps
        # `dagster dev` (the pinned Dagster's own), so that one warning is not shown.
        quiet = "ignore:Function `dev_command` is superseded"
        inherited = self.env.get("PYTHONWARNINGS")
        return {
            **super().process_env,
            "PYTHONWARNINGS": f"{inherited},{quiet}" if inherited else quiet,
        }
