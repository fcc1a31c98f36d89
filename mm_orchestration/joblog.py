"""Structured job logs: one JSON line per event, with jobName, runId, durationMs, status.

Lines go to stderr through the `mm.jobs` logger; `dagster.yaml` lists that logger as
managed, so the same events also appear in the run's log in the Dagster UI. Email
addresses are masked and secrets are never passed in.
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
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str, separators=(",", ":"))


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
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    configure()
    logger.log(level, event, extra={"fields": {k: v for k, v in fields.items() if v is not None}})


def mask_email(address: str | None) -> str | None:
    """`olivia@agency.com.au` -> `o***@agency.com.au`: enough to triage, not to harvest."""
    if not address or "@" not in address:
        return address
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"
