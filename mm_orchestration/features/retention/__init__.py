"""Storage retention: what no one needs is forgotten (Dagster's old runs, sent outbox rows,
digest periods, old ledger rows) and what compliance needs is never touched."""
