-- The console's audit entries: who (actor) acted in which role, on what target, and how
-- it ended (allowed, refused, succeeded, failed). Nullable, so that every entry written
-- with only the original columns (jobs, the CLI, older rows) stays valid.
ALTER TABLE ops.audit_log
    ADD COLUMN role    text,
    ADD COLUMN target  text,
    ADD COLUMN outcome text;

-- The audit trail is read by person and by action over a period (ops/audit_trail, the
-- console's CSV download).
CREATE INDEX audit_log_actor_idx ON ops.audit_log (actor, occurred_at);
CREATE INDEX audit_log_action_idx ON ops.audit_log (action, occurred_at);
