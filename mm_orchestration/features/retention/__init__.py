"""Storage retention: Dagster's own run history kept to its configured age."""
