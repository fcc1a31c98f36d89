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
- Any other line of a process of ours (`configure_process`: the CLI, the console):
  Python's warnings and every logger's records, through the same formatter.

Email addresses are masked and secrets are never passed in.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import dagster as dg

LOGGER_NAME = "mm.jobs"
logger = logging.getLogger(LOGGER_NAME)


# Dagster's run event types that end a step or a run, and the status they mean.
_STATUS = {
    "RUN_START": "running",
    "RUN_SUCCESS": "succeeded",
    "RUN_FAILURE": "failed",
    "RUN_CANCELED": "canceled",
    "STEP_START": "running",
    "STEP_SUCCESS": "succeeded",
    "STEP_FAILURE": "failed",
    "STEP_UP_FOR_RETRY": "retrying",
    "STEP_SKIPPED": "skipped",
}


def _document(message: str) -> dict[str, Any] | None:
    """Our event's JSON document, when `message` is one."""
    if not message.startswith("{"):
        return None
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _job_name(name: str | None) -> str | None:
    """The inventory's name for one of our jobs (`invite-cleanup`), else Dagster's."""
    from mm_orchestration.platform import inventory

    if not name:
        return None
    try:
        return inventory.get(name).name
    except inventory.UnknownJobError:
        return name


class JsonFormatter(logging.Formatter):
    """One JSON object on one line: `timestamp`, `level`, `logger`, `event`, the seed's
    fields where they apply, and the event's own (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        meta = getattr(record, "dagster_meta", None)
        message = meta.get("orig_message", "") if meta else record.getMessage()
        document = _document(message)
        if meta:
            line |= self._run_fields(meta)
        if document is not None:
            line |= document
        else:
            line["event"] = message
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(
            {k: v for k, v in line.items() if v is not None}, default=str, separators=(",", ":")
        )

    @staticmethod
    def _run_fields(meta: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "jobName": _job_name(meta.get("job_name")),
            "runId": meta.get("run_id"),
            "stepKey": meta.get("step_key"),
        }
        event = meta.get("dagster_event")
        if event is not None:
            kind = event.event_type_value
            fields["dagsterEvent"] = kind
            fields["status"] = _STATUS.get(kind)
            duration = getattr(event.event_specific_data, "duration_ms", None)
            if isinstance(duration, int | float):
                fields["durationMs"] = round(duration)
        return fields


def _outside_dagster_runs(record: logging.LogRecord) -> bool:
    # Dagster attaches its DagsterLogHandler to a managed logger for a run's duration.
    return not any(type(h).__name__ == "DagsterLogHandler" for h in logger.handlers)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so redirections are honoured."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def json_handler(level: int = logging.INFO) -> logging.Handler:
    """A handler writing JSON lines to the current sys.stderr."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.setLevel(level)
    return handler


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


def configure_process(level: int = logging.INFO) -> None:
    """Every line this process writes through Python's logging, Dagster's loggers and
    Python's warnings included, as JSON lines on stderr: for the processes that are ours
    from the start (`mm-jobs`, the console). Dagster's own processes take
    `--log-format json` (the daemon, the code server)."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handler = json_handler(level)
        # mm.jobs has its own handler (configure); its records still reach the root's
        # other handlers (a test's capture), not this one.
        handler.addFilter(lambda record: not record.name.startswith(LOGGER_NAME))
        root.addHandler(handler)
    root.setLevel(level)
    for name in ("dagster", "uvicorn", "uvicorn.error", "uvicorn.access", "alembic"):
        named = logging.getLogger(name)
        for handler in list(named.handlers):
            named.removeHandler(handler)
        named.propagate = True


def configure() -> None:
    """Install the JSON handler of `mm.jobs` once per process."""
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
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
