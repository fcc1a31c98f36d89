"""Loading the code location costs about what `import dagster` costs: every run worker
and code server loads it before anything else, so a library only some runs use (pandas
for the rollup, boto3 for report storage, the Sentry SDK when SENTRY_DSN is set, the
holiday calendar for the drill) is imported by those runs, not by every one (issue 25)."""

import json
import os
import subprocess
import sys

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
