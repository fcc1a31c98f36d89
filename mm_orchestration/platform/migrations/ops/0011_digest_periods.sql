-- One row per person and digest period that the digest has settled: 'queued' (in the
-- outbox, key digest:<user>:<period>), 'skipped' (nothing to report), 'suppressed' (the
-- address is on portal.email_suppressions) or 'missed' (its moment passed more than the
-- grace ago, after downtime: never sent stale). `moment` is the instant the period's
-- digest was due; at most one row per person has a moment inside any one period of theirs,
-- which is how a person who changes zone or time mid-period gets at most one digest.
CREATE TABLE ops.digest_periods (
    user_id     uuid NOT NULL,
    period      text NOT NULL,
    moment      timestamptz NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('queued', 'skipped', 'suppressed', 'missed')),
    settled_at  timestamptz NOT NULL,
    run_id      text,
    PRIMARY KEY (user_id, period)
);
CREATE INDEX digest_periods_moment_idx ON ops.digest_periods (user_id, moment);
-- The job-health dashboard counts outcomes per hour.
CREATE INDEX digest_periods_settled_idx ON ops.digest_periods (settled_at);

-- How far the scheduled digest has looked: each run settles the moments after it (less
-- a margin), so a run costs what is due since the last one, not what every person chose.
CREATE TABLE ops.digest_clock (
    id                smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    evaluated_through timestamptz NOT NULL
);
