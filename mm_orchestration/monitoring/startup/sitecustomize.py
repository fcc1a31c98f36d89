"""Run by Python at the start of every process whose PYTHONPATH names this folder (the
local stacks' processes, the image's, the systemd units'): its logging, warnings and
uncaught exceptions are JSON lines before anything else is imported (process_log.py).

It stands in for the interpreter's own `sitecustomize`, if it has one: the python image
and pyenv's builds have none; Debian's only installs Ubuntu's apport crash hook, which
would print a crash as text anyway."""

try:
    from mm_orchestration.monitoring.process_log import setup
except ImportError as exc:  # a Python without the project, started with its PYTHONPATH
    import json
    import sys
    from datetime import UTC, datetime

    line = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": "warning",
        "logger": "mm.startup",
        "event": f"this Python has no mm_orchestration, so no JSON-log setup: {exc}",
    }
    sys.stderr.write(json.dumps(line) + "\n")
else:
    setup()
