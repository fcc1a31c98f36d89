"""mm-orchestration: the Motion Mavericks Portal's background jobs, on Dagster."""
