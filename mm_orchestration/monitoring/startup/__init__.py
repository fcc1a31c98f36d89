"""The folder a process's PYTHONPATH names so that Python starts it writing JSON lines
(its `sitecustomize` runs mm_orchestration.monitoring.process_log.setup)."""
