"""Scale: runs through the queue at 1x, 10x and 100x today's rate, beside Dagster's floor;
then the same jobs at 10x and 100x today's rows.

Runs part. The production topology on one embedded PostgreSQL (as on one VM): our code
server (`dagster api grpc`), a floor code server of Dagster's trivial jobs
(benchmarks/floor/trivial_jobs.py), one `dagster-daemon` and a `dagster-webserver`, with
the project's dagster.yaml (our queued coordinator, ten runs at once and one per job, run
monitoring, run retries, retention). Runs are submitted through the webserver's GraphQL (the
console's door) at each level's rate: today's schedule makes about 550 runs a day, so 1x
is a run every 157 s, 10x one every 15.7 s and 100x one every 1.57 s. A run takes a few
seconds, so at 1x and 10x the machine is idle between runs: those gaps are cut to GAP_CAP
seconds (time compressed where nothing happens); 100x runs at its real rate, runs overlap.
Our runs cycle through four inventory jobs; every tenth is a storage-retention run whose
config is out of range, which fails in its first step and must alert its owner
(job_failure_sensor -> send_alert -> the outbox). The floor is the same schedule of
trivial runs (every tenth failing) through the same queue and daemon, right after ours.

Printed per level: p50/p95 submission-to-start and submission-to-success, ours and the
floor's; the failure alert's delay (failed run's end to the alert email sent) and the
sensor's lag (failed run's end to the send_alert run it requested); daemon, code server
(with its run workers) and PostgreSQL CPU as a share of one core; Dagster storage growth per
run and per day at that level. Targets: at 100x, p95 submission-to-start <= 2x the floor's,
and every alert within 60 s.

Rows part. The demo data at scale 1 (today), 10 and 100 (benchmarks/_harness clones),
each job run in process (execute_in_process) on a fresh clone, beside Dagster's trivial job
in process (the floor): seconds per job and the ratio to its time at 1x.

    .venv/bin/python benchmarks/scale.py [--levels 1,10,100] [--rows 1,10,100] [--no-rows]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _snapshot() -> str:
    """The package as it is now, copied to a folder of its own that every process of the
    benchmark imports first: a working tree being edited meanwhile cannot change (or break)
    the code under measurement halfway."""
    folder = tempfile.mkdtemp(prefix="mm-scale-src-")
    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "mm_orchestration", Path(folder) / "mm_orchestration",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(root / "deploy", Path(folder) / "deploy")
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copyfile(root / name, Path(folder) / name)
    return folder


SOURCE = _snapshot()
atexit.register(shutil.rmtree, SOURCE, ignore_errors=True)
sys.path.insert(0, SOURCE)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SOURCE, os.environ.get("PYTHONPATH")) if p)

from _harness import clone, server, source_database  # noqa: E402

from mm_orchestration.local.embedded_pg import EmbeddedPostgres, free_port  # noqa: E402
from mm_orchestration.platform import inventory  # noqa: E402
from mm_orchestration.platform.db import connect  # noqa: E402
from mm_orchestration.platform.instance import write_home  # noqa: E402
from mm_orchestration.platform.migrate import migrate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DAILY_RUNS = 550  # today's production schedule (README's table), runs per day
GAP_CAP = 8.0  # seconds: a gap longer than a run's whole life is idle time, cut to this
MIN_RUNS = 6
WINDOW = 60.0  # seconds of submissions per level at its rate, at least MIN_RUNS runs
QUIET = "0 0 1 1 *"
OURS = ["invite-cleanup", "share-link-expiry", "notification-suppression-cleanup",
        "mux-webhook-retry"]  # fmt: skip
FAILING = "storage-retention"
FAILING_CONFIG = {"ops": {"prune_dagster_runs": {"config": {"dagster_run_days": 0}}}}
ALERT_TARGET_S = 60.0
P95_TARGET = 2.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Phase:
    level: int
    who: str  # "ours" or "floor"
    runs: list[tuple[str, bool]] = field(default_factory=list)  # (run id, meant to fail)
    to_start: list[float] = field(default_factory=list)
    to_success: list[float] = field(default_factory=list)
    alert_delay: list[float] = field(default_factory=list)
    sensor_lag: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    storage_bytes: int = 0
    seconds: float = 0.0
    missing_alerts: int = 0
    folded_alerts: int = 0


class Stack:
    """The processes of the runs part, in their own process groups, stopped on exit."""

    def __init__(self, tmp: Path, pg: EmbeddedPostgres) -> None:
        self.tmp, self.pg = tmp, pg
        self.ours_port, self.floor_port, self.web_port = free_port(), free_port(), free_port()
        self.home = write_home(tmp / "dagster_home", pg.url("dagster"))
        workspace = tmp / "workspace.yaml"
        workspace.write_text(
            "load_from:\n"
            f"  - grpc_server: {{host: 127.0.0.1, port: {self.ours_port}, "
            "location_name: mm_orchestration}\n"
            f"  - grpc_server: {{host: 127.0.0.1, port: {self.floor_port}, "
            "location_name: floor}\n"
        )
        overrides = ";".join(f"{s.name}={QUIET}" for s in inventory.INVENTORY)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MM_", "SENDGRID_", "DAGSTER", "DATABASE_", "SENTRY_"))
        }
        env.update(
            DAGSTER_HOME=str(self.home),
            DATABASE_URL=pg.url("portal"),
            MM_DATA_DIR=str(tmp / "mm"),
            MM_SCHEDULE_OVERRIDES=overrides,
        )
        grpc = [str(BIN / "dagster"), "api", "grpc", "--host", "127.0.0.1"]
        self.commands = {
            "ours": [*grpc, "--port", str(self.ours_port), "--module-name", "mm_orchestration",
                     "--location-name", "mm_orchestration"],
            "floor": [*grpc, "--port", str(self.floor_port), "--python-file",
                      str(ROOT / "benchmarks/floor/trivial_jobs.py"), "--location-name", "floor"],
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p",
                          str(self.web_port), "-w", str(workspace)],
        }  # fmt: skip
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name, argv in self.commands.items():
            log = open(self.tmp / f"{name}.log", "wb")  # closed with the temporary folder
            self.processes[name] = subprocess.Popen(
                argv, env=self.env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            if name in ("ours", "floor"):
                self._wait_port(self.ours_port if name == "ours" else self.floor_port, name)

    def _wait_port(self, port: int, name: str) -> None:
        import socket

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.processes[name].poll() is None, f"{name} exited; see {self.tmp}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise SystemExit(f"{name} never listened")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far: the daemon, the code servers with their run workers (reaped
        children count), the webserver, and PostgreSQL (the postmaster, its reaped
        backends and the live ones)."""

        def total(p: psutil.Process, children: bool) -> float:
            t = p.cpu_times()
            return t.user + t.system + ((t.children_user + t.children_system) if children else 0)

        out: dict[str, float] = {}
        for name, process in self.processes.items():
            try:
                proc = psutil.Process(process.pid)
                live = sum(total(c, False) for c in proc.children(recursive=True))
                out[name] = total(proc, True) + live
            except psutil.Error:
                out[name] = 0.0
        pid = int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        machine = psutil.cpu_times()
        out["machine (all processes, 2 cores = 200%)"] = machine.user + machine.system
        out["postgres"] = total(postmaster, True) + sum(
            total(c, False) for c in postmaster.children(recursive=True) if c.is_running()
        )
        return out


def dagster_bytes(pg: EmbeddedPostgres) -> int:
    with connect(pg.url("postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size('dagster')").fetchone()
        assert row
        return int(row[0])


def run_phase(stack: Stack, client: Any, instance: Any, pg: EmbeddedPostgres, level: int,
              who: str) -> Phase:  # fmt: skip
    from dagster import DagsterRunStatus

    phase = Phase(level, who)
    real_gap = 86400 / (DAILY_RUNS * level)
    gap = min(real_gap, GAP_CAP)
    count = max(MIN_RUNS, int(WINDOW / gap))
    cpu0, bytes0, t0 = stack.cpu_seconds(), dagster_bytes(pg), time.monotonic()
    for i in range(count):
        due = t0 + i * gap
        time.sleep(max(0.0, due - time.monotonic()))
        fails = i % 10 == 4
        if who == "ours":
            job = FAILING if fails else OURS[i % len(OURS)]
            spec = inventory.get(job)
            tags = {"mm/window": f"bench:{uuid.uuid4()}", "mm/trigger": "schedule",
                    "dagster/schedule_name": f"{spec.dagster_name}_schedule"}  # fmt: skip
            run_id = client.submit_job_execution(
                spec.dagster_name,
                repository_location_name="mm_orchestration",
                repository_name="__repository__",
                run_config=FAILING_CONFIG if fails else {},
                tags=tags,
            )
        else:
            run_id = client.submit_job_execution(
                "trivial_fails" if fails else "trivial",
                repository_location_name="floor",
                repository_name="__repository__",
            )
        phase.runs.append((run_id, fails))
    # Drain: every run finished, every failure's alert sent (or given up after 180 s).
    deadline = time.monotonic() + 300
    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    while time.monotonic() < deadline:
        records = {r.dagster_run.run_id: r for r in _records(instance, phase)}
        done = all(r.dagster_run.status in finished for r in records.values())
        if done and len(records) == len(phase.runs):
            if who == "floor" or _alerts(pg, phase, records, final=False):
                break
        time.sleep(1)
    phase.seconds = time.monotonic() - t0
    cpu1 = stack.cpu_seconds()
    phase.cpu = {k: (cpu1[k] - cpu0.get(k, 0.0)) / phase.seconds for k in cpu1}
    phase.storage_bytes = dagster_bytes(pg) - bytes0
    records = {r.dagster_run.run_id: r for r in _records(instance, phase)}
    for run_id, fails in phase.runs:
        record = records[run_id]
        created = record.create_timestamp.timestamp()
        if record.start_time:
            phase.to_start.append(record.start_time - created)
        if record.dagster_run.status == DagsterRunStatus.SUCCESS and record.end_time:
            phase.to_success.append(record.end_time - created)
        if not fails and record.dagster_run.status != DagsterRunStatus.SUCCESS:
            print(f"  ! {who} run {run_id[:8]} ended {record.dagster_run.status.value}")
    if who == "ours":
        _alerts(pg, phase, records, final=True)
        _sensor_lag(instance, phase, records)
    return phase


def _records(instance: Any, phase: Phase) -> list[Any]:
    from dagster import RunsFilter

    ids = [run_id for run_id, _ in phase.runs]
    return list(instance.get_run_records(filters=RunsFilter(run_ids=ids)))


def _alerts(pg: EmbeddedPostgres, phase: Phase, records: dict[str, Any], final: bool) -> bool:
    """Whether every failed run's alert was dealt with: its email sent, or the failure
    folded into the alert already sent for its streak or error-rate episode (audited
    `alert_folded`: the owner was told once, not once per run). With `final`, record the
    delays (to the email sent, or to the fold)."""
    failed = [run_id for run_id, fails in phase.runs if fails]
    keys = [f"job-failed:{run_id}" for run_id in failed]
    with connect(pg.url("portal"), autocommit=True) as conn:
        rows = dict(
            conn.execute(
                "SELECT idempotency_key, extract(epoch FROM sent_at)::float8"
                "  FROM ops.notification_outbox WHERE idempotency_key = ANY(%s)",
                [keys],
            ).fetchall()
        )
        folded = dict(
            conn.execute(
                "SELECT details->>'key', extract(epoch FROM min(occurred_at))::float8"
                "  FROM ops.audit_log WHERE action = 'alert_folded'"
                "   AND details->>'key' = ANY(%s) GROUP BY 1",
                [keys],
            ).fetchall()
        )
    sent = {key: at for key, at in rows.items() if at is not None}
    if final:
        phase.folded_alerts = len(set(folded) - set(sent))
    sent = {**folded, **sent}
    if final:
        for run_id in failed:
            at = sent.get(f"job-failed:{run_id}")
            end = records[run_id].end_time
            if at is None or end is None:
                phase.missing_alerts += 1
            else:
                phase.alert_delay.append(at - end)
    return len(sent) == len(failed)


def _sensor_lag(instance: Any, phase: Phase, records: dict[str, Any]) -> None:
    from dagster import RunsFilter

    wanted = {f"job-failed:{run_id}": run_id for run_id, fails in phase.runs if fails}
    alerts = instance.get_run_records(filters=RunsFilter(job_name="send_alert"), limit=500)
    for record in alerts:
        config = record.dagster_run.run_config or {}
        key = config.get("ops", {}).get("record_alert", {}).get("config", {}).get("key")
        if key in wanted and records[wanted[key]].end_time:
            lag = record.create_timestamp.timestamp() - records[wanted[key]].end_time
            phase.sensor_lag.append(lag)


def runs_part(levels: list[int]) -> list[tuple[Phase, Phase]]:
    from dagster import DagsterInstance
    from dagster_graphql import DagsterGraphQLClient

    results = []
    with (
        server() as pg,
        tempfile.TemporaryDirectory(prefix="mm-scale-") as tmp,
        ExitStack() as stop,
    ):
        with connect(pg.url("postgres"), autocommit=True) as conn:
            for name in ("portal", "dagster"):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with connect(pg.url("portal"), autocommit=True) as conn:
            migrate(conn, with_portal_schema=True)
            from mm_orchestration.local.demo_data import seed_demo

            with conn.transaction():
                seed_demo(conn)
        stack = Stack(Path(tmp), pg)
        stop.callback(stack.stop)
        stack.start()
        client = DagsterGraphQLClient("127.0.0.1", port_number=stack.web_port, timeout=60)
        deadline = time.monotonic() + 180
        while True:  # the webserver up, both locations loaded
            try:
                client.submit_job_execution("trivial", "floor", "__repository__")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        instance = stop.enter_context(DagsterInstance.from_config(str(stack.home)))
        time.sleep(15)  # the warm-up run done, the sensors' first ticks past
        for level in levels:
            ours = run_phase(stack, client, instance, pg, level, "ours")
            floor = run_phase(stack, client, instance, pg, level, "floor")
            results.append((ours, floor))
            print_level(ours, floor)
    return results


def print_level(ours: Phase, floor: Phase) -> None:
    level = ours.level
    gap = min(86400 / (DAILY_RUNS * level), GAP_CAP)
    print(f"\n== {level}x today's rate ({DAILY_RUNS * level:,} runs/day; one run every "
          f"{86400 / (DAILY_RUNS * level):.2f} s, submitted every {gap:.2f} s; "
          f"{len(ours.runs)} runs, {sum(f for _, f in ours.runs)} meant to fail)")  # fmt: skip
    for phase in (ours, floor):
        start, success = phase.to_start, phase.to_success
        print(f"  {phase.who:<6} submission->start p50 {pct(start, .5):6.2f} s  "
              f"p95 {pct(start, .95):6.2f} s   ->success p50 "
              f"{pct(success, .5):6.2f} s  p95 {pct(success, .95):6.2f} s")  # fmt: skip
        cpu = ", ".join(f"{k} {v * 100:.0f}%" for k, v in phase.cpu.items())
        print(f"         CPU (share of one core): {cpu}")
        per_run = phase.storage_bytes / max(1, len(phase.runs))
        per_day = per_run * DAILY_RUNS * level
        print(f"         Dagster storage: {per_run / 1024:.0f} KiB/run -> "
              f"{per_day / 2**20:.0f} MiB/day at this rate")  # fmt: skip
    if ours.alert_delay or ours.missing_alerts:
        print(f"  alert delay (failed run end -> alert sent): max "
              f"{max(ours.alert_delay, default=float('nan')):.1f} s, p50 "
              f"{pct(ours.alert_delay, .5):.1f} s; folded into a streak or episode "
              f"{ours.folded_alerts}; missing {ours.missing_alerts}")  # fmt: skip
        print(f"  sensor lag (failed run end -> send_alert run created): max "
              f"{max(ours.sensor_lag, default=float('nan')):.1f} s")  # fmt: skip
    ratio = pct(ours.to_start, 0.95) / pct(floor.to_start, 0.95)
    ok = ratio <= P95_TARGET
    alert_ok = not ours.missing_alerts and max(ours.alert_delay, default=0) <= ALERT_TARGET_S
    print(f"  ratio p95 submission->start ours/floor: {ratio:.2f} (target <= {P95_TARGET}: "
          f"{'met' if ok else 'MISSED'}); alerts within {ALERT_TARGET_S:.0f} s: "
          f"{'met' if alert_ok else 'MISSED'}")  # fmt: skip


ROW_JOBS = ["share-link-expiry", "notification-digest", "mux-webhook-retry", "invite-cleanup",
            "notification-suppression-cleanup", "analytics-rollup"]  # fmt: skip


def rows_part(scales: list[int]) -> None:
    """Each job in process on a fresh clone of the demo data at each scale, beside Dagster's
    trivial job in process (the floor of a run on this machine)."""
    import dagster as dg

    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.local.demo_data import seed_demo
    from mm_orchestration.platform.settings import Settings

    sys.path.insert(0, str(ROOT / "benchmarks" / "floor"))
    from trivial_jobs import trivial

    print("\n== the same jobs at today's rows and more (demo data --scale N, in process)")
    times: dict[tuple[str, int], float] = {}
    with server() as pg, tempfile.TemporaryDirectory(prefix="mm-rows-") as tmp:
        for scale in scales:

            def build(url: str, scale: int = scale) -> None:
                with connect(url, autocommit=True) as conn, conn.transaction():
                    seed_demo(conn, scale=scale)

            source = source_database(pg, build, name=f"rows_{scale}")
            with connect(pg.url(source), autocommit=True) as conn:
                counts = conn.execute(
                    "SELECT (SELECT count(*) FROM portal.share_links),"
                    " (SELECT count(*) FROM portal.users),"
                    " (SELECT count(*) FROM portal.mux_webhook_dlq),"
                    " (SELECT count(*) FROM portal.events)"
                ).fetchone()
            print(f"  scale {scale}: share links {counts[0]:,}, people {counts[1]:,}, "
                  f"dead letters {counts[2]:,}, events {counts[3]:,}")  # fmt: skip
            with dg.DagsterInstance.ephemeral() as instance:
                start = time.perf_counter()
                trivial.execute_in_process(instance=instance)
                times["floor", scale] = time.perf_counter() - start
            for job in ROW_JOBS:
                with clone(pg, source) as url:
                    env = {"DATABASE_URL": url, "MM_DATA_DIR": str(Path(tmp) / f"{job}-{scale}"),
                           "SENDGRID_DIGEST_TEMPLATE_ID": "d-bench"}  # fmt: skip
                    os.environ.update(env)
                    defs = build_definitions(Settings.from_env(env))
                    definition = defs.resolve_job_def(inventory.get(job).dagster_name)
                    partition = None
                    if definition.partitions_def is not None:
                        partition = definition.partitions_def.get_last_partition_key()
                    with dg.DagsterInstance.ephemeral() as instance:
                        start = time.perf_counter()
                        result = definition.execute_in_process(
                            instance=instance, partition_key=partition, raise_on_error=False
                        )
                        times[job, scale] = time.perf_counter() - start
                    if not result.success:
                        print(f"  ! {job} failed at scale {scale}")
                    took, first = times[job, scale], times[job, scales[0]]
                    print(f"    {job:<34} {took:7.2f} s  (floor {times['floor', scale]:.2f} s; "
                          f"x{took / first:.1f} its time at {scales[0]}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,10,100")
    parser.add_argument("--rows", default="1,10,100")
    parser.add_argument("--no-rows", action="store_true")
    parser.add_argument("--no-runs", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    started = time.monotonic()
    if not args.no_runs:
        levels = [int(x) for x in args.levels.split(",")]
        results = runs_part(levels)
        print("\nsummary (ours / floor, p95 submission->start):")
        for ours, floor in results:
            print(f"  {ours.level:>4}x: {pct(ours.to_start, .95):.2f} s / "
                  f"{pct(floor.to_start, .95):.2f} s = "
                  f"{pct(ours.to_start, .95) / pct(floor.to_start, .95):.2f}; alert max "
                  f"{max(ours.alert_delay, default=float('nan')):.1f} s")  # fmt: skip
    if not args.no_rows:
        rows_part([int(x) for x in args.rows.split(",")])
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
