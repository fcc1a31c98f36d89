"""Loading the code location costs about what `import dagster` costs: every run worker
and code server loads it before anything else, so a library only some runs use (pandas
for the rollup, boto3 for report storage, the Sentry SDK when SENTRY_DSN is set, the
holiday calendar for the drill) is imported by those runs, not by every one (issue 25)."""

import json
import os
import subprocess
import sys

from mm_orchestration.definitions import build_definitions, build_job_alone, feature_definitions
from mm_orchestration.platform import inventory
from mm_orchestration.platform.settings import Settings

# What the definitions must not import: each is loaded by the code that uses it.
LOADED_WHEN_USED = (
    "pandas", "numpy", "pyarrow", "boto3", "botocore", "sentry_sdk", "urllib3", "requests",
    "holidays", "sendgrid", "cryptography", "kubernetes", "jinja2",
)  # fmt: skip


def test_loading_the_code_location_imports_only_what_every_run_uses():
    env = {k: v for k, v in os.environ.items() if k != "SENTRY_DSN"}
    script = (
        "import json, sys\n"
        "import mm_orchestration.definitions as d\n"
        "d.defs()\n"
        "print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "dagster" in loaded
    assert sorted(loaded & set(LOADED_WHEN_USED)) == []


def test_commands_that_run_no_job_do_not_load_dagster():
    """`mm-jobs dlq`, `migrate` and a refused setting read the settings and the database,
    never a job: Dagster's import would be most of their start-up (and of the suite's
    `mm-jobs` processes)."""
    script = (
        "import json, sys\n"
        "from mm_orchestration.cli import jobs\n"
        "from mm_orchestration.features.mux_dlq import commands, operations\n"
        "from mm_orchestration.platform import migrate, settings\n"
        "settings.Settings.from_env()\n"
        "print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "psycopg" in loaded and "dagster" not in loaded


def test_a_run_worker_of_an_operational_job_imports_only_its_own_feature():
    """A run worker loads the location and asks for its job (ReconstructableJob): for an
    operational job it builds that job's folder alone, so no other feature's modules, and
    not monitoring's sensors, are imported."""
    script = (
        "import json, sys\n"
        "from dagster._core.definitions.reconstruct import ReconstructableRepository\n"
        "repo = ReconstructableRepository.for_module('mm_orchestration', 'defs')\n"
        "repo.get_reconstructable_job(sys.argv[1]).get_definition()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    for spec in inventory.INVENTORY:
        if spec.kind != "op":
            continue
        proc = subprocess.run(
            [sys.executable, "-c", script, spec.dagster_name],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        loaded = json.loads(proc.stdout.splitlines()[-1])
        feature_modules = [m for m in loaded if m.startswith("mm_orchestration.features.")]
        folders = {m.split(".")[2] for m in feature_modules}
        # A feature may use another's code (the DLQ's alert uses the outbox): never its defs.
        declared = {m for m in feature_modules if m.endswith(".defs")}
        assert declared == {f"mm_orchestration.features.{spec.feature}.defs"}, (spec, folders)
        assert "mm_orchestration.monitoring.defs" not in loaded, spec.name


def test_each_operational_job_built_alone_is_the_job_the_location_serves():
    """The job a run worker builds from its folder alone is the one the code server shows
    and schedules: the same steps, tags, executor, logger, retry policies and resources."""
    settings = Settings()
    location = build_definitions(settings).get_repository_def()
    ops = [spec for spec in inventory.INVENTORY if spec.kind == "op"]
    assert ops
    for spec in ops:
        alone = build_job_alone(settings, spec.dagster_name)
        served = location.get_job(spec.dagster_name)
        assert alone is not None, spec.name
        assert alone.name == served.name and alone.tags == served.tags
        assert alone.executor_def.name == served.executor_def.name
        assert set(alone.loggers) == set(served.loggers)
        ours, theirs = alone.get_job_snapshot(), served.get_job_snapshot()
        assert ours.dep_structure_snapshot == theirs.dep_structure_snapshot
        assert ours.node_defs_snapshot == theirs.node_defs_snapshot
        for handle in served.graph.iterate_node_handles():
            assert alone.get_retry_policy_for_handle(handle) == served.get_retry_policy_for_handle(
                handle
            )
        for key in served.required_resource_keys:
            assert key in alone.resource_defs, (spec.name, key)
            assert type(alone.resource_defs[key]) is type(served.resource_defs[key])
    # Every row of the inventory names the folder that declares its job.
    for spec in inventory.INVENTORY:
        declared = feature_definitions(settings, spec.feature).jobs or []
        assert spec.dagster_name in {job.name for job in declared}, spec
    # Asset jobs and the jobs outside the inventory come from the whole location.
    assert build_job_alone(settings, "residency_report") is None
    assert build_job_alone(settings, "send_alert") is None
