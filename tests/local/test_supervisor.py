"""The supervisor's own promises, on small stand-in processes: a process that dies before
serving is reported with how it ended and its own last words."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mm_orchestration.local.embedded_pg import free_port
from mm_orchestration.local.supervisor import Command, Supervisor


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


@dataclass
class _Sleepers(Supervisor):
    """One long-lived process of this Python, like the stacks' Dagster processes."""

    port: int = 0

    def commands(self) -> dict[str, Command]:
        argv = [sys.executable, "-c", "import time; time.sleep(120)"]
        return {"sleeper": Command(argv, ready_port=self.port or None)}


def test_a_stack_whose_supervisor_died_is_stopped_before_the_next_one_starts(tmp_path: Path):
    """SIGKILL of `mm-jobs dev` leaves its process groups running; the next start on the same
    DAGSTER_HOME stops them instead of running a second daemon beside them."""
    import subprocess

    import psutil

    old = _Sleepers(dagster_home=tmp_path, env={})
    old.start("sleeper")
    orphan = old.processes["sleeper"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    # As a SIGKILLed supervisor leaves it: its pid (now gone) first, then its groups.
    (tmp_path / "stack.pids").write_text(f"{dead.stdout.strip()}\n{orphan.pid}\n")
    new = _Sleepers(dagster_home=tmp_path, env={})
    new.start_all()
    try:
        assert orphan.wait(timeout=10) is not None
        assert psutil.Process(new.processes["sleeper"].pid).is_running()
    finally:
        new.stop_all()
        old.processes.clear()


@pytest.mark.parametrize("now_at_its_pid", ["an unrelated process", "this python, claim held"])
def test_a_dead_supervisors_pid_reused_since_does_not_keep_its_stack_running(
    tmp_path: Path, now_at_its_pid: str
) -> None:
    """The pid file's first line is the supervisor's pid: once it died, that pid may be
    given to any process (an editor, or a process of this Python such as another `mm-jobs`
    command), which must not pass for the supervisor and keep its orphans running. While
    the start holds the instance's claim, no other supervisor can be alive in charge."""
    import subprocess

    import psutil

    from mm_orchestration.local.claims import Claim
    from mm_orchestration.local.supervisor import STACK_LOCK

    old = _Sleepers(dagster_home=tmp_path, env={})
    old.start("sleeper")
    orphan = old.processes["sleeper"]
    if now_at_its_pid == "an unrelated process":
        reused = subprocess.Popen(["sleep", "120"])
    else:
        reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (tmp_path / "stack.pids").write_text(f"{reused.pid}\n{orphan.pid}\n")
    new = _Sleepers(dagster_home=tmp_path, env={})
    claim = Claim(tmp_path / STACK_LOCK)
    if now_at_its_pid == "this python, claim held":
        claim.take()  # as `mm-jobs dev` holds it before it starts its processes
    try:
        new.start_all()
        assert orphan.wait(timeout=10) is not None
        assert psutil.Process(new.processes["sleeper"].pid).is_running()
        assert reused.poll() is None  # the process that has the pid now is left alone
    finally:
        new.stop_all()
        claim.release()
        old.processes.clear()
        reused.kill()
        reused.wait()


def test_a_port_already_in_use_is_refused_with_its_name(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        stack = _Sleepers(dagster_home=tmp_path, env={}, port=busy.getsockname()[1])
        with pytest.raises(RuntimeError, match="is already in use by another process"):
            stack.start("sleeper")
    assert stack.processes == {}


def test_a_port_handed_out_is_never_handed_out_again() -> None:
    """A port is free only until its server binds it: `mm-jobs dev` chose its code server's
    port, then PostgreSQL was given the same one, and the start failed (seen in make test).
    Two thousand ports in a row, none twice (the kernel's choice alone repeats within a few
    hundred)."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


@dataclass
class _Deaf(Supervisor):
    """A process that stays alive but never answers its probe, as `dagster code-server
    start` does once its `dagster api grpc` child is dead."""

    asked: list[int] | None = None

    def commands(self) -> dict[str, Command]:
        argv = [sys.executable, "-c", "import time; time.sleep(120)"]
        return {"code-server": Command(argv, answers=self._answers)}

    def _answers(self) -> bool:
        import os
        import signal

        assert self.asked is not None
        pid = self.processes["code-server"].pid
        if pid not in self.asked:
            self.asked.append(pid)
        if len(self.asked) == 2:  # restarted once: enough, stop the supervise loop
            os.kill(os.getpid(), signal.SIGTERM)
        return False


def test_a_process_alive_but_not_answering_is_killed_and_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal

    from mm_orchestration.local import supervisor

    monkeypatch.setattr(supervisor, "PROBE_INTERVAL_SECONDS", 0.1)
    monkeypatch.setattr(supervisor, "UNANSWERED_SECONDS", 0.5)
    stack = _Deaf(dagster_home=tmp_path, env={}, asked=[])
    stack.start("code-server")
    first = stack.processes["code-server"]
    handlers = {sig: signal.getsignal(sig) for sig in supervisor.STOP_SIGNALS}
    try:
        stack.supervise(restart_delay=0.1)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert first.returncode == -signal.SIGKILL
    assert stack.asked is not None and len(stack.asked) == 2 and stack.asked[0] == first.pid
    said = capsys.readouterr().out
    assert f"code-server (pid {first.pid}) has not answered for " in said, said
    assert "code-server was killed by SIGKILL; restarting" in said
