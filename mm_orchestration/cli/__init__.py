"""`mm-jobs`: a thin parser over the features' commands.

Each command lives beside what it works on (`features/mux_dlq/commands.py` for `mm-jobs
dlq`, ...) and adds itself with `register`; this module only assembles them and turns a
refused argument or setting into one JSON line on stderr and exit code 2, as a log
collector reads every other line of ours.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

# The platform's own commands come first; then every feature's `commands.py`, found as
# definitions.py finds each feature's `defs.py` (a new feature's commands need no edit
# here); then the console and the local stacks.
FIRST = ("mm_orchestration.cli.jobs", "mm_orchestration.platform.outbox.commands")
LAST = ("mm_orchestration.console.commands", "mm_orchestration.local.commands")


def command_modules() -> list[str]:
    """The modules whose `register(sub)` adds commands, in the order `mm-jobs --help` lists
    them."""
    from mm_orchestration import features

    found = sorted(
        f"{features.__name__}.{module.name}.commands"
        for module in pkgutil.iter_modules(features.__path__)
        if module.ispkg
        and importlib.util.find_spec(f"{features.__name__}.{module.name}.commands") is not None
    )
    return [*FIRST, *found, *LAST]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusals are JSON lines too (every sub-command's parser is
    one: argparse makes them of the top parser's class)."""

    def error(self, message: str) -> NoReturn:
        from mm_orchestration.cli.arguments import EXIT_REFUSED, refuse

        refuse(f"{self.prog}: {message}", usage=self.format_usage().strip())
        sys.exit(EXIT_REFUSED)


def parser() -> argparse.ArgumentParser:
    """`mm-jobs` and every sub-command."""
    top = _Parser(
        prog="mm-jobs",
        description="Migrate, seed demo data, run or list jobs, work the dead-letter queue and "
        "the outbox, and start the console or the whole local stack.",
    )
    sub = top.add_subparsers(required=True, metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code (2: a refused argument or setting, named). As the
    `mm-jobs` process itself (no `argv`), first make whatever the process writes to stderr
    JSON lines: its logging, Python's warnings and an uncaught exception (process_log)."""
    if argv is None:
        from mm_orchestration.monitoring.process_log import setup

        setup()
    from mm_orchestration.cli.arguments import refuse
    from mm_orchestration.platform.inventory import UnknownJobError
    from mm_orchestration.platform.settings import SettingsError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, UnknownJobError) as exc:
        return refuse(str(exc))


if __name__ == "__main__":
    sys.exit(main())
