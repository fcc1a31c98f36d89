-- Keep the count behind a red status with the row, so the day's summary needs no rescans.
ALTER TABLE ops.tenant_health_daily
    ADD COLUMN overdue_milestones integer NOT NULL DEFAULT 0;
