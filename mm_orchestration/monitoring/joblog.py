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
  step and Dagster event type (`dagsterEvent`). Whatever the run, and whoever launched it,
  its process writes its start (`status` started, info) and its end (succeeded at info,
  failed at error with the `error`, canceled at warning, each with `durationMs` from the
  start), a step's retry (warning) and a step's failure (error), which Dagster logs at
  DEBUG (start, success, retry) or ERROR (`RunLines`); its other DEBUG events are not
  lines at the INFO level. Dagster's own `json_console_logger` writes the whole LogRecord
  (thirty-odd keys, the run under `dagster_meta`), none of the seed's fields.
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
import time
from typing import Any

import dagster as dg

from mm_orchestration.monitoring.log_lines import StderrHandler, json_handler

LOGGER_NAME = "mm.jobs"
logger = logging.getLogger(LOGGER_NAME)


def _outside_dagster_runs(record: logging.LogRecord) -> bool:
    # Dagster attaches its DagsterLogHandler to a managed logger for a run's duration.
    return not any(type(h).__name__ == "DagsterLogHandler" for h in logger.handlers)


# The run's and its steps' moments every run's log writes whatever its level, at the level
# each is written at. Dagster logs a run's start and success and a step's retry at DEBUG
# (it stores them; its text logger hides them), and a failure or a cancel at ERROR; a
# cancel is someone's (or the runtime limit's) decision, not the job failing.
MOMENTS = {
    "PIPELINE_START": logging.INFO,
    "PIPELINE_SUCCESS": logging.INFO,
    "PIPELINE_FAILURE": logging.ERROR,
    "PIPELINE_CANCELED": logging.WARNING,
    "STEP_UP_FOR_RETRY": logging.WARNING,
    "STEP_FAILURE": logging.ERROR,
}
RUN_ENDS = frozenset({"PIPELINE_SUCCESS", "PIPELINE_FAILURE", "PIPELINE_CANCELED"})


class RunLines(logging.Filter):
    """The run's log at its level, plus its MOMENTS at theirs: a run's start and end (with
    `durationMs` from the start this process saw, else from when it set up the run's log,
    as a run that fails to initialise never starts), a step's retry and failure. The
    run's job is the inventory's when the run belongs to one (`job_name`, found once: a
    materialisation from the asset graph runs Dagster's `__ASSET_JOB`)."""

    def __init__(self, level: int, job_name: str | None = None) -> None:
        super().__init__()
        self.level = level
        self.job_name = job_name
        self.started = time.time()

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None)
        event = meta.get("dagster_event") if meta else None
        kind = getattr(event, "event_type_value", None)
        fields: dict[str, Any] = {"jobName": self.job_name} if self.job_name else {}
        moment = MOMENTS.get(kind) if isinstance(kind, str) else None
        if moment is None:
            if record.levelno < self.level:
                return False
        else:
            record.levelno, record.levelname = moment, logging.getLevelName(moment)
            if kind == "PIPELINE_START":
                self.started = record.created
            elif kind in RUN_ENDS:
                fields["durationMs"] = round((record.created - self.started) * 1000)
        if fields:
            record.run_fields = fields
        return True


def _inventory_job(init_context: dg.InitLoggerContext) -> str | None:
    """The inventory's name of the job the run belongs to, if it belongs to one."""
    from mm_orchestration.platform.scheduling import spec_for

    job = init_context.job_def
    if job is None:
        return None
    try:
        spec = spec_for(job.name, job.tags, job.asset_selection)
    except Exception:  # the run's log must never stop the run
        return None
    return spec.name if spec is not None else None


@dg.logger(
    dg.Field(
        {"log_level": dg.Field(str, is_required=False, default_value="INFO")},
        description="JSON lines on stderr: Dagster's run events and ours, with the seed's fields.",
    ),
    description="JSON lines on stderr, one object per line (mm_orchestration.monitoring.joblog).",
)
def run_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    """Every job's `console` logger: the run's log as JSON lines on stderr, its start and
    end among them whatever the level (RunLines)."""
    level = logging.getLevelNamesMapping()[str(init_context.logger_config["log_level"]).upper()]
    # Dagster hands this logger only the records it is enabled for: every one, so that the
    # filter can keep a run's DEBUG moments and drop the rest below `level`.
    run_log = logging.Logger("dagster", level=logging.DEBUG)
    handler = json_handler(logging.NOTSET)
    handler.addFilter(RunLines(level, _inventory_job(init_context)))
    run_log.addHandler(handler)
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
