"""Run by Python at the start of every process whose PYTHONPATH names this folder (the
local stacks' processes, the image's, the systemd units'): its logging, warnings and
uncaught exceptions are JSON lines before anything else is imported (process_log.py)."""

from mm_orchestration.monitoring.process_log import setup

setup()
