"""Reports and rollups as partitioned Dagster assets."""
