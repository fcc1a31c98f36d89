"""Quiet by default: loading the code location warns about nothing of ours, each job log
event is written once, and Kubernetes tags stay where the K8s launcher is."""

from __future__ import annotations

import json
import subprocess
import sys

from dagster import DagsterInstance, job, op

from mm_orchestration.monitoring.joblog import log_event


def test_loading_the_definitions_raises_no_dagster_warning() -> None:
    code = (
        "import warnings, dagster\n"
        "warnings.simplefilter('error')\n"
        "from mm_orchestration.platform.settings import Settings\n"
        "from mm_orchestration.definitions import build_definitions\n"
        "build_definitions(Settings.from_env({})).get_repository_def()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


@op
def logs_one_event() -> None:
    log_event("job.succeeded", jobName="quiet-test", status="succeeded")


@job
def logging_job() -> None:
    logs_one_event()


def test_a_run_logs_each_event_once_and_as_json(capfd, tmp_path) -> None:
    """In a run whose instance manages the mm.jobs logger (dagster.yaml), Dagster prints and
    stores the line; our own handler stays silent. Outside a run it prints the JSON."""
    (tmp_path / "dagster.yaml").write_text(
        "python_logs:\n  managed_python_loggers: [mm.jobs]\n  python_log_level: INFO\n"
    )
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        result = logging_job.execute_in_process(instance=instance)
        assert result.success
        stored = [
            r.user_message
            for r in instance.all_logs(result.run_id)
            if r.dagster_event is None and "quiet-test" in r.user_message
        ]
    printed = [line for line in capfd.readouterr().err.splitlines() if "quiet-test" in line]
    assert len(stored) == 1 and json.loads(stored[0])["event"] == "job.succeeded"
    assert len(printed) == 1, printed  # Dagster's line, not ours beside it

    log_event("job.succeeded", jobName="quiet-test", status="succeeded")
    (outside,) = [line for line in capfd.readouterr().err.splitlines() if "quiet-test" in line]
    assert json.loads(outside)["jobName"] == "quiet-test"
