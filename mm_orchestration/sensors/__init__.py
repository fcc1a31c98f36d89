"""Cross-cutting sensors: DLQ depth, run alerts, audit."""
