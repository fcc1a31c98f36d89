"""One JSON object per line: the formatter and the stderr handler that every process of
ours logs through, so that a log collector reads each line as one record.

The schema (see joblog.py for where each kind of line comes from): the keys Dagster's own
JSON format uses (`timestamp`, `level`, `logger`, `event`), the seed's fields where they
apply (`jobName`, `runId`, `durationMs`, `status`), an `exception` field holding a
traceback, and whatever else the event carries. This module imports no Dagster, so a
process can set up its logging before Dagster (or anything else) is imported.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

# Dagster's event types that start or end a step or a run, and the status they mean. The
# run's are spelled PIPELINE_* in the events themselves (DagsterEventType.RUN_START.value).
_STATUS = {
    "PIPELINE_START": "started",
    "PIPELINE_SUCCESS": "succeeded",
    "PIPELINE_FAILURE": "failed",
    "PIPELINE_CANCELED": "canceled",
    "STEP_START": "started",
    "STEP_SUCCESS": "succeeded",
    "STEP_FAILURE": "failed",
    "STEP_UP_FOR_RETRY": "retrying",
    "STEP_SKIPPED": "skipped",
}


# A run as Dagster's own lines name it in their text ("Checking run <id>", "Run <id> is
# blocked by ...", "Completed launch of run <id> for ..."): the daemon's lines carry no
# run metadata, so this is the only place their run is written.
_RUN_NAMED = re.compile(
    r"\brun\s+(?:with\s+)?(?:id\s+)?['\"]?"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b",
    re.IGNORECASE,
)


def run_named(text: object) -> str | None:
    """The id of the run a line of Dagster's text is about (the first it names), if any."""
    found = _RUN_NAMED.search(text) if isinstance(text, str) else None
    return found.group(1).lower() if found else None


def _document(message: str) -> dict[str, Any] | None:
    """Our event's JSON document, when `message` is one."""
    if not message.startswith("{"):
        return None
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


# The tag every run of one of our jobs carries: its inventory name (scheduling.JOB_TAG).
JOB_TAG = "mm/job"


def job_name(name: str | None, tags: Any = None) -> str | None:
    """The name our lines give a run's job: the inventory's (`invite-cleanup`, from the
    run's mm/job tag or Dagster's name for it, `invite_cleanup`); for a job outside the
    inventory its mm/job tag (`send-alert`), else Dagster's name."""
    from mm_orchestration.platform import inventory

    tag = tags.get(JOB_TAG) if hasattr(tags, "get") else None
    for candidate in (tag, name):
        if candidate:
            try:
                return inventory.get(candidate).name
            except inventory.UnknownJobError:
                pass
    return tag or name or None


def errors_in(args: Any) -> list[Any]:
    """Dagster's error objects (SerializableErrorInfo: `message`, `stack`, `to_string`)
    among a log call's arguments: Dagster logs some errors as text (`"Caught error:\n%s"`)
    rather than as an exception."""
    values = args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else ()
    return [
        value
        for value in values
        if hasattr(value, "to_string") and hasattr(value, "stack") and hasattr(value, "cls_name")
    ]


def with_errors_apart(msg: Any, args: Any, errors: list[Any]) -> tuple[str, str]:
    """A line whose arguments hold Dagster's error objects: its text with each error as the
    error's own message, on one line, and the errors' whole text (message and stack) for
    the `exception` field."""
    brief = {id(error): str(error.message).strip() for error in errors}
    if isinstance(args, dict):
        shown: Any = {k: brief.get(id(v), v) for k, v in args.items()}
    else:
        shown = tuple(brief.get(id(v), v) for v in args)
    try:
        text = str(msg) % shown
    except (TypeError, ValueError):
        text = str(msg)
    event = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return event, "\n".join(error.to_string() for error in errors)


# The loggers Dagster writes its own lines through (dagster_webserver logs as
# "dagster-webserver").
DAGSTER_LOGGERS = frozenset({"dagster", "dagster-webserver", "dagit"})


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
        errors = [] if meta or not record.args else errors_in(record.args)
        if errors:  # Dagster's error object in the text: its traceback is `exception`
            message, line["exception"] = with_errors_apart(record.msg, record.args, errors)
        document = _document(message)
        if meta:
            line |= self._run_fields(meta, message)
            # What the run's log knows of its run (joblog.RunLines): its inventory job,
            # how long it ran.
            line |= getattr(record, "run_fields", None) or {}
        if document is not None:
            line |= document
        else:
            line["event"] = message
            # Dagster's own lines (the webserver's, in the console) name a run only in
            # their text; ours carry runId themselves, and an alert's text names another
            # job's run that must not claim the line.
            if line.get("runId") is None and record.name.split(".")[0] in DAGSTER_LOGGERS:
                line["runId"] = run_named(message)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(
            {k: v for k, v in line.items() if v is not None}, default=str, separators=(",", ":")
        )

    @staticmethod
    def _run_fields(meta: Any, message: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "jobName": job_name(meta.get("job_name"), meta.get("job_tags")),
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
            # A failure, a retry, a cancel: its error and traceback, which Dagster's text
            # logger appends to the message and `orig_message` leaves out. The error is the
            # op's own first line (not Dagster's "Error occurred while executing op"), as
            # the CLI and the alerts say it.
            error = getattr(event.event_specific_data, "error", None)
            if error is not None and hasattr(error, "to_string"):
                from mm_orchestration.monitoring.run_status import error_line

                # A retry's error is Dagster's request for it, caused by the op's error.
                while error.cause is not None and error.cls_name == "RetryRequestedFromPolicy":
                    error = error.cause
                fields["error"] = error_line(error) or None
                fields["exception"] = error.to_string()
            elif kind == "PIPELINE_FAILURE":  # no error object: Dagster's reason is the error
                fields["error"] = message.strip() or None
        return fields


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so redirections are honoured."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def json_handler(level: int = logging.INFO) -> logging.Handler:
    """A handler writing JSON lines to the current sys.stderr."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.setLevel(level)
    return handler


def json_line(level: int, logger: str, event: str, **fields: Any) -> str:
    """One line in the same schema, for a process that writes it itself (a command's
    refusal) rather than through a configured logger."""
    document = json.dumps({"event": event, **fields}, default=str)
    record = logging.LogRecord(logger, level, "", 0, document, None, None)
    return JsonFormatter().format(record)
