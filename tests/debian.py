"""Tests that need a program from a Debian package: skipped where it is missing, and said
so plainly at the end of the run with the one command that installs it (conftest.py).

A machine without them passes `make test` without ever trying the console in a browser
or behind nginx; the last lines of the run say which packages to install to try it."""

from __future__ import annotations

import pytest

# Recognised in the run's summary: the package's name follows it.
MISSING = "needs Debian's package "


def needs(package: str, present: bool, what: str) -> pytest.MarkDecorator:
    """Skip unless `present`: `package` (Debian's name) installs what `what` needs."""
    return pytest.mark.skipif(not present, reason=f"{MISSING}{package} ({what})")


def summary(reasons: list[str]) -> list[str]:
    """The lines saying what was not tried and the command that installs it, from the
    skip reasons of a run (empty when nothing needed a package)."""
    packages: dict[str, set[str]] = {}
    for reason in reasons:
        if MISSING in reason:
            package, _, what = reason.split(MISSING, 1)[1].partition(" (")
            packages.setdefault(package, set()).add(what.rstrip(")"))
    if not packages:
        return []
    tried = "; ".join(f"{p}: {', '.join(sorted(w))}" for p, w in sorted(packages.items()))
    return [
        f"NOT TRIED, for want of Debian packages: {tried}.",
        "Install them and run again: sudo apt-get install -y " + " ".join(sorted(packages)),
    ]
