"""What a run worker pays to load our code location, against Dagster's trivial location.

Issue target: a light run imports what its job uses, so loading the code location costs
about what loading any location costs in Dagster. Each sample is a new interpreter that
does what a run worker does before its first step: `import dagster`, then load the
location from its code pointer and get one job's definition (`ReconstructableJob`). The
floor is the one-op job of benchmarks/floor/trivial_location.py, loaded the same way in
the same run. Figures are the child's CPU seconds (median), so a busy machine moves them
less than wall time; the first sample of each kind is not counted (it compiles modules).

    .venv/bin/python benchmarks/location_load.py [samples, default 7]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = ROOT / "benchmarks" / "floor" / "trivial_location.py"

CHILD = """
import json, sys, time
kind, job = sys.argv[1], sys.argv[2]
start = time.process_time()
import dagster
imported = time.process_time()
from dagster._core.definitions.reconstruct import ReconstructableRepository
if kind == "floor":
    repo = ReconstructableRepository.for_file(sys.argv[3], "defs")
else:
    repo = ReconstructableRepository.for_module("mm_orchestration", "defs")
repo.get_reconstructable_job(job).get_definition()
print(json.dumps({"import": imported - start, "total": time.process_time() - start,
                  "modules": len(sys.modules)}))
"""

# (label, kind, job): the floor, the lightest operational job, and the heaviest (an asset
# job whose run reads pandas' frames and writes a spreadsheet).
CASES = (
    ("Dagster's trivial location", "floor", "trivial"),
    ("ours, share-link expiry", "ours", "share_link_expiry"),
    ("ours, residency report", "ours", "residency_report"),
)


def sample(kind: str, job: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, job, str(FLOOR)],
        env=env, cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"loading {job} ({kind}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(samples: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mm-location-load-") as tmp:
        # Loading reads the settings, never the database: any well-formed address will do.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MM_", "DAGSTER"))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(DATABASE_URL="postgresql://bench@127.0.0.1:1/portal", MM_DATA_DIR=tmp)
        results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in CASES}
        for _label, kind, job in CASES:
            sample(kind, job, env)  # compiles what it imports; not counted
        for _ in range(samples):
            for label, kind, job in CASES:  # interleaved: a busy second hits all alike
                results[label].append(sample(kind, job, env))
    medians = {
        label: {key: statistics.median(r[key] for r in rows) for key in ("import", "total")}
        for label, rows in results.items()
    }
    floor = medians[CASES[0][0]]
    print(f"import dagster alone: {floor['import']:.3f} CPU-s (median of {samples})")
    for label, _, _ in CASES:
        row, modules = medians[label], int(results[label][-1]["modules"])
        after = row["total"] - row["import"]
        print(f"{label:>28}: {row['total']:.3f} CPU-s to a job definition "
              f"({after:.3f} after import dagster; {modules} modules)")  # fmt: skip
    for label, _, _ in CASES[1:]:
        print(f"ratio {label} / floor: {medians[label]['total'] / floor['total']:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
