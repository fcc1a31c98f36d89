"""What other code writes its own way, as JSON lines, so that a log collector reading our
processes never meets a text line (issue 26). process_log.setup installs it at each
process's start. Nothing here imports click or Dagster: each is adjusted the moment the
process imports it, and only then (`when_imported`).

- click, which parses every Dagster command (dagster-daemon, dagster, dagster-webserver),
  prints a usage error as `Usage: ...`, `Try ...`, `Error: ...`, a missing command as the
  whole help, and a prompt cut short as `Aborted!`: each is one JSON line instead, on the
  same stream, with the same exit code (`exitCode`) and the command's usage (`usage`).
- Dagster's own `--log-format json` (structlog; the daemon, the code server, the
  webserver) names a run only in its text and writes an error's `exc_info` as a repr, so
  the traceback is lost: its lines get `runId` and the traceback in `exception`, the
  fields of our own lines (log_lines.py). An error Dagster logs as text (the daemon's
  `"Caught error:\n%s"` with its SerializableErrorInfo) has its one line in `event` and
  its traceback in `exception` too.
- Any other text on stderr (Python's own message for `sys.exit("...")`, Dagster's
  `sys.stderr.write` when a run worker cannot store its events, uvicorn's text handler in
  `dagster-webserver`) is one JSON line of `mm.stderr` per line of text (`JsonOnlyStderr`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO, cast

from mm_orchestration.monitoring.log_lines import (
    errors_in,
    json_line,
    run_named,
    with_errors_apart,
)

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

STDERR = "mm.stderr"
STARTUP_LOGGER = "mm.startup"


# -- adjusting a module when it is imported ------------------------------------------


class _AfterImport:
    """Runs a function on a module as soon as Python has executed it: a process that
    never imports click or Dagster pays nothing, one that does is adjusted before any of
    its code has used them. A finder on sys.meta_path (importlib.abc's base class is not
    needed, and costs every process 5 ms to import)."""

    def __init__(self) -> None:
        self.patches: dict[str, Callable[[ModuleType], None]] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        loader = spec.loader if spec is not None else None
        execute = getattr(loader, "exec_module", None)
        if execute is None:
            return spec

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _apply(patch, module)

        try:
            # The loader is this module's own (a new one per file), so only it changes.
            setattr(loader, "exec_module", exec_module)  # noqa: B010 - a method, replaced
        except AttributeError:  # a loader that takes no attributes: left as it is
            pass
        return spec


def _finder() -> _AfterImport:
    found = next((f for f in sys.meta_path if isinstance(f, _AfterImport)), None)
    if found is None:
        found = _AfterImport()
        sys.meta_path.insert(0, found)
    return found


def when_imported(name: str, patch: Callable[[ModuleType], None]) -> None:
    """Run `patch` on module `name` once it is imported (at once if it is already)."""
    _finder().patches[name] = patch
    if name in sys.modules:
        _apply(patch, sys.modules[name])


def _apply(patch: Callable[[ModuleType], None], module: ModuleType) -> None:
    if getattr(module, "_mm_json_lines", False):
        return
    try:
        patch(module)
    except Exception as exc:  # a library that changed: the process runs, and says so
        logging.getLogger(STARTUP_LOGGER).warning(
            "%s is not adjusted for JSON lines: %s: %s", module.__name__, type(exc).__name__, exc
        )
        return
    module._mm_json_lines = True  # type: ignore[attr-defined]


# -- click's errors ------------------------------------------------------------------


def _program() -> str:
    """This process's command (`dagster-daemon`; `dagster` for `python -m dagster`)."""
    path = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    return path.parent.name if path.name == "__main__.py" else path.name


def _write(file: Any, line: str) -> None:
    stream = file if file is not None else sys.stderr
    stream.write(line + "\n")
    stream.flush()


def click_lines(core: ModuleType) -> None:
    """click's own words on stderr as JSON lines (see the module). click calls `show()`
    with no stream (its stderr) when a command ends on a ClickException; the subclasses
    that print something else (UsageError: the usage first; NoArgsIsHelpError: the help)
    have their own `show`, so each is replaced."""
    exceptions = sys.modules["click.exceptions"]
    no_command = getattr(exceptions, "NoArgsIsHelpError", None)

    def show(self: Any, file: Any = None) -> None:
        ctx = getattr(self, "ctx", None)
        if no_command is not None and isinstance(self, no_command):
            message = "a command is required (--help lists them)"
        else:
            message = self.format_message()
        fields: dict[str, Any] = {"exitCode": self.exit_code}
        program = _program()
        if ctx is not None:
            program = ctx.find_root().info_name or program
            message = f"{ctx.command_path}: {message}"
            fields["usage"] = ctx.get_usage()
        _write(file, json_line(logging.ERROR, program, message, **fields))

    for cls in (exceptions.ClickException, exceptions.UsageError, no_command):
        if cls is not None:
            cls.show = show
    if hasattr(core, "_echo_aborted"):  # Ctrl-C or end of input at a prompt: exit 1

        def aborted() -> None:
            _write(None, json_line(logging.WARNING, _program(), "aborted", exitCode=1))

        setattr(core, "_echo_aborted", aborted)  # noqa: B010 - a private name, replaced


# -- Dagster's JSON format -----------------------------------------------------------


def _name_the_run(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: `runId` for a line whose text names a run (the daemon's
    "Checking run <id>"), as our lines carry it."""
    if event.get("runId") is None:
        run_id = run_named(event.get("event"))
        if run_id is not None:
            event["runId"] = run_id
    return event


def _error_apart(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: a line whose arguments hold Dagster's error object (the
    daemon's "Caught error:\n%s") has the error's one line in `event` and its traceback
    in `exception` (the formatter passes a stdlib record's arguments, `positional_args`,
    for this; they are not written)."""
    args = event.pop("positional_args", None)
    record = event.get("_record")
    errors = errors_in(args) if args else []
    if errors and record is not None and "exception" not in event:
        event["event"], event["exception"] = with_errors_apart(record.msg, args, errors)
    return event


def dagster_lines(log: ModuleType) -> None:
    """Dagster's `--log-format json` lines with `runId` and an error's traceback in
    `exception` (see the module). Every Dagster command that logs JSON builds its
    formatter from `dagster._utils.log.get_structlog_json_formatter` when it configures
    its loggers (`configure_loggers`, which reads it from its module each time): the
    formatter it returns gets three more of structlog's processors, and is otherwise
    Dagster's (its keys and any extra field)."""
    build = log.get_structlog_json_formatter

    def json_formatter() -> Any:
        import structlog

        class Formatter(structlog.stdlib.ProcessorFormatter):
            """Dagster's, passing a stdlib record's arguments on (for _error_apart), also
            when `logging.config.dictConfig` builds it again from its class (Dagster's
            configure_loggers does)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["pass_foreign_args"] = True
                super().__init__(*args, **kwargs)

        built = build()
        return Formatter(
            foreign_pre_chain=built.foreign_pre_chain,
            processors=[
                _error_apart,
                _name_the_run,
                structlog.processors.format_exc_info,  # exc_info -> exception (a traceback)
                *built.processors,
            ],
        )

    setattr(log, "get_structlog_json_formatter", json_formatter)  # noqa: B010


# -- any other text on stderr --------------------------------------------------------


def _as_json(line: str) -> str:
    """`line` as it should reach the collector: a JSON object as it is, text as one."""
    if not line.strip():
        return ""  # a blank line (click's after ^C) is no record
    if line.startswith("{"):
        try:
            if isinstance(json.loads(line), dict):
                return line + "\n"
        except ValueError:
            pass
    return json_line(logging.ERROR, STDERR, line.rstrip("\r")) + "\n"


class JsonOnlyStderr:
    """sys.stderr for a process whose every line must be JSON. Whole lines pass as they
    are when they are JSON objects (every logger of ours, the uncaught-exception hook);
    any other line becomes one (`_as_json`). Text is held until its line ends, so a line
    written in pieces (print writes the newline apart) is judged whole; what is left
    unended when the process exits is written then. Everything else (fileno, isatty,
    encoding) is the real stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""
        # Reentrant: a signal handler that writes while a write holds it must not hang.
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # as a text stream refuses bytes (click probes it)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
            out = "".join(_as_json(line) for line in lines)
            if out:
                self._stream.write(out)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def end(self) -> None:
        """Write the line left unended (at exit)."""
        with self._lock:
            pending, self._pending = self._pending, ""
            if pending.strip():
                self._stream.write(_as_json(pending))
                self._stream.flush()

    def _after_fork(self) -> None:
        # The parent's held text is the parent's to write; a lock another thread held at
        # the fork would never be released in the child.
        self._lock = threading.RLock()
        self._pending = ""

    def __getattr__(self, name: str) -> Any:
        if name == "_stream":
            raise AttributeError(name)
        return getattr(self._stream, name)


def guard_stderr() -> None:
    """Make sys.stderr a JsonOnlyStderr (once)."""
    if sys.stderr is None or isinstance(sys.stderr, JsonOnlyStderr):
        return
    guard = JsonOnlyStderr(sys.stderr)
    sys.stderr = cast(TextIO, guard)
    atexit.register(guard.end)  # registered first, so it runs after every other
    os.register_at_fork(after_in_child=guard._after_fork)
