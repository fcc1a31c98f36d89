"""Structured job logs: one JSON line per event, with jobName, runId, durationMs, status.

Each event is written once. Inside a Dagster run, `dagster.yaml` lists the `mm.jobs` logger
as managed, so Dagster records the line in the run's log (the UI) and prints it; our own
stderr handler then stays silent, or every line would appear twice. Outside a run (the
CLI, sensors in the daemon) our handler prints it. The message itself is the JSON document,
so it is structured wherever it lands. Email addresses are masked and secrets are never
passed in.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "mm.jobs"
logger = logging.getLogger(LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    """`{"ts":..., "level":..., "event":..., <fields>}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
        }
        try:
            line.update(json.loads(record.getMessage()))
        except ValueError:
            line["event"] = record.getMessage()
        return json.dumps(line, default=str, separators=(",", ":"))


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


def configure() -> None:
    """Install the JSON handler once per process."""
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
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
