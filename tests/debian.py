"""Tests that need a program from a Debian package: skipped where it is missing, and said
so plainly at the end of the run with the one command that installs it (conftest.py).

A machine without them passes `make test` without ever trying the console in a browser
or behind nginx; the last lines of the run say which packages to install to try it."""

from __future__ import annotations

import os

import pytest

# Recognised in the run's summary: the package's name follows it.
MISSING = "needs Debian's package "


def needs(package: str, present: bool, what: str) -> pytest.MarkDecorator:
    """Skip unless `present`: `package` (Debian's name) installs what `what` needs."""
    return needs_each((package, present, what))


def needs_each(*requirements: tuple[str, bool, str]) -> pytest.MarkDecorator:
    """Skip unless every (package, present, what) is present, naming every one missing:
    pytest gives only the first true `skipif`'s reason, so two marks would name one package
    and a newcomer would learn of the second only after installing the first."""
    missing = [
        f"{MISSING}{package} ({what})" for package, present, what in requirements if not present
    ]
    return pytest.mark.skipif(bool(missing), reason="; ".join(missing))


def summary(reasons: list[str]) -> list[str]:
    """The lines saying what was not tried and the command that installs it, from the
    skip reasons of a run (empty when nothing needed a package)."""
    packages: dict[str, set[str]] = {}
    for reason in reasons:
        for named in reason.split(MISSING)[1:]:
            package, _, what = named.partition(" (")
            packages.setdefault(package, set()).add(what.rstrip("); "))
    if not packages:
        return []
    tried = "; ".join(f"{p}: {', '.join(sorted(w))}" for p, w in sorted(packages.items()))
    return [
        f"NOT TRIED, for want of Debian packages: {tried}.",
        "Install them and run again: "
        + ("" if os.geteuid() == 0 else "sudo ")
        + "apt-get install -y "
        + " ".join(sorted(packages)),
    ]
