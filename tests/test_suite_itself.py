"""The suite tells a newcomer what it did not try: a run on a machine without a Debian
package a test needs ends by naming the package and the command that installs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.debian import summary

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_the_runs_last_lines_name_what_was_not_tried_and_how_to_install_it(tmp_path):
    (tmp_path / "test_needs.py").write_text(
        "from tests.debian import needs\n"
        "import pytest\n"
        "@needs('chromium', False, 'the console in a real browser')\n"
        "def test_browser(): pass\n"
        "@needs('nginx-light', False, 'the console behind a real nginx')\n"
        "def test_proxy(): pass\n"
        "@needs('nginx-light', True, 'present')\n"
        "def test_present(): pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         str(tmp_path / "test_needs.py")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 passed, 2 skipped" in lines[-1]
    assert lines[-3].startswith("NOT TRIED, for want of Debian packages: chromium: the console")
    assert "nginx-light: the console behind a real nginx" in lines[-3]
    assert lines[-2] == "Install them and run again: sudo apt-get install -y chromium nginx-light"


def test_nothing_is_said_when_nothing_was_missing():
    assert summary(["some other reason"]) == []
