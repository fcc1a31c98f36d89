"""One owner per local folder, on a real embedded PostgreSQL: a server whose owner is alive
is neither restarted nor stopped by anyone else, one left behind by an owner killed outright
is stopped and started again, a postmaster.pid naming a pid reused since is never taken for
the server, and of several starts at the same moment exactly one wins. (The whole stack's
refusal: tests/local/test_dev_command.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mm_orchestration.local.embedded_pg import EmbeddedPostgres, ServerInUse
from mm_orchestration.platform.db import connect

# A process that owns a server in ROOT until SIGTERM, as a stack owns its data folder's.
OWNER = """
import signal, sys, time
from pathlib import Path
from mm_orchestration.local.embedded_pg import EmbeddedPostgres
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = EmbeddedPostgres(Path(sys.argv[1]), durable=False).start()
print(server.port, flush=True)
try:
    while True:
        time.sleep(1)
finally:
    server.stop()
"""

# A start at a moment shared with others: each waits for GO to exist, then starts.
RACER = """
import sys, time
from pathlib import Path
from mm_orchestration.local.embedded_pg import EmbeddedPostgres, ServerInUse
server = EmbeddedPostgres(Path(sys.argv[1]), durable=False)
while not Path(sys.argv[2]).exists():
    time.sleep(0.005)
try:
    server.start()
except ServerInUse as exc:
    print("refused", exc.pid, flush=True)
    sys.exit(0)
print("started", flush=True)
sys.stdin.read()  # holds the server until the test closes stdin
server.stop()
"""


def _owner(root: Path) -> subprocess.Popen[str]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    assert owner.stdout.readline().strip(), "the owner did not start its server"
    return owner


def _postmaster(root: Path) -> int:
    return int((root / "data" / "postmaster.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    """Alive, not a zombie (a server whose starter is gone waits for init to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _answers(server: EmbeddedPostgres) -> bool:
    with connect(server.url("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def test_a_server_whose_owner_is_alive_is_neither_restarted_nor_stopped(tmp_path: Path) -> None:
    """A second start in the folder of a running one (a second `mm-jobs dev`) used to stop
    the first one's server as "left running"."""
    root = tmp_path / "postgres"
    owner = _owner(root)
    try:
        serving = _postmaster(root)
        second = EmbeddedPostgres(root, durable=False)
        with pytest.raises(ServerInUse) as refused:
            second.start()
        assert refused.value.pid == owner.pid
        assert f"in use by process {owner.pid}" in str(refused.value)
        with pytest.raises(ServerInUse):
            second.stop()
        assert _postmaster(root) == serving and _alive(serving)
        assert _answers(second)  # the same server, on the port it recorded
        assert "left running" not in (root / "server.log").read_text()
    finally:
        owner.terminate()
        owner.wait(timeout=60)
    assert not _alive(serving)  # its owner stopped it


def test_a_server_left_by_an_owner_killed_outright_is_stopped_and_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "postgres"
    owner = _owner(root)
    left = _postmaster(root)
    owner.kill()  # SIGKILL: no stop, PostgreSQL lives on (pg_ctl detached it)
    owner.wait()
    assert _alive(left)
    server = EmbeddedPostgres(root, durable=False)
    try:
        server.start()
        assert "stopping a PostgreSQL server left running" in caplog.text
        assert not _alive(left)
        assert _postmaster(root) != left and _answers(server)
    finally:
        server.stop()


def test_a_postmaster_pid_reused_by_an_unrelated_process_is_not_taken_for_the_server(
    tmp_path: Path,
) -> None:
    """After a crash or a reboot, postmaster.pid may name a pid some other process has now;
    `pg_ctl` would take it for the server and signal it."""
    server = EmbeddedPostgres(tmp_path / "postgres", durable=False).start()
    recorded = (server.data_dir / "postmaster.pid").read_text().splitlines()
    server.stop()
    user = EmbeddedPostgres._run_as_user()  # the server's user: pg_ctl may signal its processes
    ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    unrelated = subprocess.Popen(["sleep", "120"], **ids)  # type: ignore[call-overload]
    try:
        pidfile = server.data_dir / "postmaster.pid"
        pidfile.write_text("\n".join([str(unrelated.pid), *recorded[1:]]) + "\n")
        if user is not None:
            os.chown(pidfile, user.pw_uid, user.pw_gid)
        assert not server.is_running()
        server.start()
        assert _answers(server) and _postmaster(server.root) != unrelated.pid
        assert unrelated.poll() is None, "the unrelated process was signalled"
    finally:
        server.stop()
        unrelated.kill()
        unrelated.wait()


def test_of_starts_at_the_same_moment_exactly_one_owns_the_server(tmp_path: Path) -> None:
    root, go = tmp_path / "postgres", tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(root), str(go)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        time.sleep(1.5)  # every racer imported and waiting
        go.touch()
        said = {}
        for racer in racers:
            assert racer.stdout is not None
            said[racer.pid] = racer.stdout.readline().split()
        started = [pid for pid, words in said.items() if words == ["started"]]
        assert len(started) == 1, said
        (winner,) = started
        refused = [words for pid, words in said.items() if pid != winner]
        assert refused == [["refused", str(winner)]] * 2, refused
        assert _alive(_postmaster(root))
    finally:
        for racer in racers:
            if racer.poll() is None:
                assert racer.stdin is not None
                racer.stdin.close()
            racer.wait(timeout=60)
    assert not (root / "data" / "postmaster.pid").exists()  # the winner stopped its server


def test_the_claim_is_never_inherited_by_the_server(tmp_path: Path) -> None:
    """Were the server to hold its starter's claim, a starter killed outright would leave
    its folder claimed for as long as the server lives, and the next start refused."""
    server = EmbeddedPostgres(tmp_path / "postgres", durable=False).start()
    try:
        postmaster = psutil.Process(_postmaster(server.root))
        family = [postmaster, *postmaster.children()]
        held = {p.pid: [f.path for f in p.open_files() if f.path.endswith(".lock")] for p in family}
        assert not any(held.values()), held
    finally:
        server.stop()
