"""The long version of the digest's property test (issue 23): the job against the oracle
(tests/digest_oracle.py) for many random lives over the world's zones, 2024-2032, nine
days each (a weekly person's week and a day), people changing zone, time and frequency.

Prints the examples tried, the wall time and the result; exits non-zero on the first
counterexample, which hypothesis prints whole.

Run: `.venv/bin/python benchmarks/digest_property.py [--examples 1000] [--days 9]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--days", type=float, default=9)
    args = parser.parse_args()
    env = {
        **os.environ,
        "MM_DIGEST_PROPERTY_EXAMPLES": str(args.examples),
        "MM_DIGEST_PROPERTY_DAYS": str(args.days),
        "MM_DIGEST_PROPERTY_RANDOM": "1",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
         "tests/features/digests/test_digest_property.py"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    print(
        f"digest property (issue 23): {args.examples} random lives of {args.days:g} days, "
        f"{time.monotonic() - started:.0f} s: {'held' if done.returncode == 0 else 'FAILED'}"
    )
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
