"""Structured logs: every line a process of ours writes is one JSON object.

One schema for every line, Dagster's and ours: the keys Dagster's own JSON log format uses
(`dagster-daemon run --log-format json`, `dagster api grpc --log-format json`: structlog's
`timestamp`, `level`, `logger`, `event`), plus the seed's fields where they apply
(`jobName`, `runId`, `durationMs`, `status`) and whatever else the event carries.

- Our events (`log_event`): `event` is the event's name (`job.succeeded`), its fields beside.
  Inside a Dagster run, `dagster.yaml` lists the `mm.jobs` logger as managed, so Dagster
  records the line in the run's log (the UI) and hands it to the run's loggers; our own
  stderr handler then stays silent, or every line would appear twice. Outside a run (the
  CLI, sensors) our handler prints it.
- A run's log (`run_logger`, every job's `console` logger): Dagster's run events and our
  managed lines, with the run's job (the inventory's name when it is one of ours), run id,
  step and Dagster event type (`dagsterEvent`); a step's or run's end carries `status`, a
  step's success its `durationMs`. Dagster's own `json_console_logger` writes the whole
  LogRecord (thirty-odd keys, the run under `dagster_meta`), none of the seed's fields.
- Any other line of a process of ours (process_log.py: `configure_process` for the CLI's
  runs and the console, the startup hook for Dagster's daemon, code servers and run
  workers): Python's warnings, uncaught exceptions and every logger's records, through
  the same formatter (log_lines.py).
- What other code prints its own way (library_lines.py): click's usage errors in Dagster's
  commands, Dagster's own JSON lines given `runId` and `exception` (a traceback), and any
  other text on stderr, each a JSON line.

Email addresses are masked and secrets are never passed in.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import dagster as dg

from mm_orchestration.monitoring.log_lines import StderrHandler, json_handler

LOGGER_NAME = "mm.jobs"
logger = logging.getLogger(LOGGER_NAME)


def _outside_dagster_runs(record: logging.LogRecord) -> bool:
    # Dagster attaches its DagsterLogHandler to a managed logger for a run's duration.
    return not any(type(h).__name__ == "DagsterLogHandler" for h in logger.handlers)


@dg.logger(
    dg.Field(
        {"log_level": dg.Field(str, is_required=False, default_value="INFO")},
        description="JSON lines on stderr: Dagster's run events and ours, with the seed's fields.",
    ),
    description="JSON lines on stderr, one object per line (mm_orchestration.monitoring.joblog).",
)
def run_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    """Every job's `console` logger: the run's log as JSON lines on stderr."""
    level = logging.getLevelNamesMapping()[str(init_context.logger_config["log_level"]).upper()]
    run_log = logging.Logger("dagster", level=level)
    run_log.addHandler(json_handler(level))
    return run_log


def configure() -> None:
    """Install the JSON handler of `mm.jobs` once per process."""
    if any(isinstance(h, StderrHandler) for h in logger.handlers):
        return
    handler = json_handler()
    handler.addFilter(_outside_dagster_runs)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    configure()
    document = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
    logger.log(level, json.dumps(document, default=str, separators=(",", ":")))


def mask_email(address: str | None) -> str | None:
    """`olivia@agency.com.au` -> `o***@agency.com.au`: enough to triage, not to harvest."""
    if not address:
        return address
    if "@" not in address:  # not an address at all (a malformed row): still personal data
        return f"{address[:1]}*** (no @)"
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"
