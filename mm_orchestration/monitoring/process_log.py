"""Every process we start writes JSON lines from its first instruction: Dagster's daemon,
its code servers and run workers (on this machine, under systemd, in the image and in each
Kubernetes run pod) and `mm-jobs` itself, so that a log collector never meets a text line.

Dagster's `--log-format json` covers Dagster's loggers once Dagster has configured them,
and nothing else: a Python warning raised before then (the daemon's "Error loading
repository location" while the code server starts) is text, a library's
`logging.warning(...)` gives the root logger a text handler of its own (every later line
then printed twice, once as text), an uncaught exception is a multi-line traceback, and
the Helm chart's daemon runs with a fixed command that has no `--log-format`. `setup`
covers each:

- the root logger writes as JSON every record that no logger below it has written already
  (Dagster's handler writes its own, so no line appears twice);
- Python's warnings go through logging (`py.warnings`) as JSON;
- an uncaught exception, in any thread, or one Python can only report ("Exception ignored
  in ..."), is one JSON object with its traceback in `exception`;
- `dagster-daemon run` without `--log-format` is given `--log-format json`;
- click's usage errors in Dagster's commands, Dagster's JSON lines (their run and
  traceback as fields) and any other text on stderr are JSON lines (library_lines.py).

Python runs `setup` at the start of every process whose PYTHONPATH names STARTUP (the
folder's `sitecustomize`): the local stacks give their processes that PYTHONPATH (and so
the run workers their code servers start), and the image and the systemd units set it.
`mm-jobs` calls it first thing. The formatter is log_lines.py's, the one every line uses.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from mm_orchestration.monitoring import library_lines
from mm_orchestration.monitoring.log_lines import StderrHandler, json_handler

STARTUP = Path(__file__).with_name("startup")
UNCAUGHT = "mm.uncaught"


def python_path(existing: str | None = None) -> str:
    """PYTHONPATH for a process that must start with `setup`: STARTUP, then `existing`."""
    rest = [
        entry for entry in (existing or "").split(os.pathsep) if entry not in ("", str(STARTUP))
    ]
    return os.pathsep.join([str(STARTUP), *rest])


def _written_below_root(record: logging.LogRecord) -> bool:
    """Whether a logger between the record's own and the root has a handler, which has
    written the record already (Dagster's, once it has configured its loggers)."""
    node = logging.root.manager.loggerDict.get(record.name)
    while isinstance(node, logging.Logger) and node is not logging.root:
        if node.handlers:
            return True
        node = node.parent
    return False


def _root_handler() -> logging.Handler | None:
    return next((h for h in logging.root.handlers if isinstance(h, StderrHandler)), None)


def configure_logging(level: int) -> None:
    """The root logger and Python's warnings as JSON lines on stderr, from `level` up."""
    root = logging.getLogger()
    handler = _root_handler()
    if handler is None:
        # A text handler left by `logging.basicConfig` (or `logging.warning` before any
        # configuration) would print every line a second time, as text.
        for old in list(root.handlers):
            root.removeHandler(old)
        handler = json_handler(level)
        handler.addFilter(lambda record: not _written_below_root(record))
        root.addHandler(handler)
    handler.setLevel(level)
    root.setLevel(level)
    logging.captureWarnings(True)
    # Its own handler: a warning is one JSON line whoever reconfigures the root later.
    warnings_log = logging.getLogger("py.warnings")
    if not any(isinstance(h, StderrHandler) for h in warnings_log.handlers):
        warnings_log.addHandler(json_handler(logging.WARNING))
        warnings_log.propagate = False


def configure_process(level: int = logging.INFO) -> None:
    """Every line this process writes through Python's logging, Dagster's loggers and
    uvicorn's included, and Python's warnings, as JSON lines on stderr from `level` up:
    for the commands that log as they work (`mm-jobs run`, the console). Imports nothing,
    so it comes before what it must cover."""
    configure_logging(level)
    for name in ("dagster", "uvicorn", "uvicorn.error", "uvicorn.access", "alembic"):
        named = logging.getLogger(name)
        for handler in list(named.handlers):
            named.removeHandler(handler)
        named.propagate = True


def _log_uncaught(
    level: int,
    kind: type[BaseException],
    error: BaseException | None,
    trace: TracebackType | None,
    where: str = "",
) -> None:
    exc_info: Any = (kind, error, trace)  # a thread's hook may have no exception object
    logging.getLogger(UNCAUGHT).log(
        level, f"uncaught {kind.__name__}{where}: {error}", exc_info=exc_info
    )


def _excepthook(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    # Ctrl-C is an operator's stop, not a crash; the exit status is Python's either way.
    level = logging.WARNING if issubclass(kind, KeyboardInterrupt) else logging.CRITICAL
    _log_uncaught(level, kind, error, trace)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):  # as Python's own hook: a thread's exit
        return
    name = args.thread.name if args.thread is not None else "?"
    _log_uncaught(
        logging.CRITICAL, args.exc_type, args.exc_value, args.exc_traceback, f" in thread {name}"
    )


def _unraisablehook(unraisable: Any) -> None:
    where = f" ({unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r})"
    _log_uncaught(
        logging.ERROR,
        unraisable.exc_type,
        unraisable.exc_value,
        unraisable.exc_traceback,
        where,
    )


def _dagster_daemon_json(argv: list[str]) -> None:
    """`dagster-daemon run` logs JSON even where its command line is not ours to change:
    the Helm chart runs `dagster-daemon run -w ...` as a fixed command, and the daemon's
    `--log-format` has no environment variable."""
    if argv and Path(argv[0]).name == "dagster-daemon" and argv[1:2] == ["run"]:
        if not any(arg.split("=", 1)[0] == "--log-format" for arg in argv[2:]):
            argv[2:2] = ["--log-format", "json"]


# The `mm-jobs` commands whose stderr is text for the person who asked, not a log: the
# verdicts of `audit verify` and `evidence verify`, and the note beside `grants`'s SQL
# (docs/cli.md, docs/operations.md).
_FOR_A_PERSON = (["audit", "verify"], ["evidence", "verify"], ["grants"])


def _stderr_for_a_person(argv: list[str]) -> bool:
    if not argv or Path(argv[0]).name != "mm-jobs":
        return False
    return any(argv[1 : 1 + len(command)] == command for command in _FOR_A_PERSON)


def setup() -> None:
    """JSON lines for everything this process writes through logging, its warnings and
    its uncaught exceptions (see the module); safe to call more than once."""
    if _root_handler() is None:
        configure_logging(logging.WARNING)
    uncaught = logging.getLogger(UNCAUGHT)
    if not uncaught.handlers:
        uncaught.addHandler(json_handler(logging.DEBUG))
        uncaught.propagate = False
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
    _dagster_daemon_json(sys.argv)
    library_lines.when_imported("click.core", library_lines.click_lines)
    library_lines.when_imported("dagster._utils.log", library_lines.dagster_lines)
    if not _stderr_for_a_person(sys.argv):
        library_lines.guard_stderr()
    # A code server that Dagster starts itself (a workspace that names a module, not a
    # server) takes its --log-format from this variable.
    os.environ.setdefault("DAGSTER_CLI_API_GRPC_LOG_FORMAT", "json")
