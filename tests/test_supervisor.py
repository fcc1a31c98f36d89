"""The supervisor's own promises, on small stand-in processes: a process that dies before
serving is reported with how it ended and its own last words."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mm_orchestration.embedded_pg import free_port
from mm_orchestration.supervisor import Command, Supervisor


@dataclass
class _Failing(Supervisor):
    def commands(self) -> dict[str, Command]:
        script = (
            "import sys; print('cannot load the code location: boom', file=sys.stderr); sys.exit(3)"
        )
        return {"code-server": Command([sys.executable, "-c", script], ready_port=free_port())}


def test_a_process_that_dies_before_serving_is_named_with_its_own_error(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = _Failing(dagster_home=tmp_path, env={}, log_dir=logs)
    with pytest.raises(RuntimeError) as failed:
        stack.start("code-server")
    message = str(failed.value)
    assert message.startswith("code-server exited with status 3 before serving:"), message
    assert "cannot load the code location: boom" in message
    stack.stop_all()
