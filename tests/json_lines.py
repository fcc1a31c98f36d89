"""Reading a process's output as a log collector does: one JSON object per line (issue 26)."""

from __future__ import annotations

import json
from typing import Any

# Dagster's JSON format and ours share these keys (monitoring/log_lines.py).
KEYS = {"timestamp", "level", "logger", "event"}


def json_lines(text: str, where: str) -> list[dict[str, Any]]:
    """Every non-empty line of `text` as a JSON object with the common keys, else the
    assertion names the first line that is not."""
    parsed = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where}: not a JSON line: {line[:300]}") from None
        assert isinstance(document, dict), f"{where}: not a JSON object: {line[:300]}"
        assert KEYS <= set(document), f"{where}: {sorted(KEYS - set(document))} missing: {line}"
        parsed.append(document)
    return parsed
