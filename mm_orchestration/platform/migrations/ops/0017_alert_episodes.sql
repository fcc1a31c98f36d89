-- Alert episodes: one row per stretch of time something was unhealthy, so that it is
-- said once when it starts and once when it is over, never once per tick or per run.
--   error_rate: a job above its error-rate threshold (subject: the job)
--   ticks:      schedule ticks that failed or did not become runs in time (subject: the
--               schedule, or the code location and contact when the cause is the location)
--   freshness:  an asset past its freshness policy (subject: the asset key)
-- The alerts' outbox keys name the row (alert-episode:<id>:opened / :closed), so each is
-- sent once; a failed run inside an open error-rate episode is folded into it (its run id
-- in `folded`) instead of being an email of its own.
CREATE TABLE ops.alert_episodes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('error_rate', 'ticks', 'freshness')),
    subject    text NOT NULL,
    job_name   text,
    contact    text NOT NULL CHECK (contact IN ('reliability', 'compliance', 'admin')),
    opened_at  timestamptz NOT NULL DEFAULT now(),
    -- The first healthy observation since the last problem; cleared by a new problem.
    good_since timestamptz,
    closed_at  timestamptz,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    folded     text[] NOT NULL DEFAULT '{}'
);
-- At most one open episode per subject: two sensors opening the same one open it once.
CREATE UNIQUE INDEX alert_episodes_one_open ON ops.alert_episodes (kind, subject)
    WHERE closed_at IS NULL;
CREATE INDEX alert_episodes_recent ON ops.alert_episodes (opened_at);
