-- A run that was stopped (the console's Terminate, the local stack stopping, Ctrl-C on
-- `mm-jobs run`) is 'canceled' in the ledger, as Dagster shows it, not 'failed'.
ALTER TABLE ops.job_runs DROP CONSTRAINT job_runs_status_check;
ALTER TABLE ops.job_runs ADD CONSTRAINT job_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'canceled'));
