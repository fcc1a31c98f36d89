-- Tables owned by mm-orchestration: the ledger, the outbox, the audit trail and job outputs.

CREATE TABLE ops.job_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name      text NOT NULL,
    window_key    text NOT NULL,
    run_id        text NOT NULL,
    status        text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    duration_ms   bigint,
    rows_affected bigint,
    error         text,
    trigger       text,
    actor         text,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- The idempotency invariant: at most one succeeded run per job and window.
CREATE UNIQUE INDEX job_runs_one_success_per_window
    ON ops.job_runs (job_name, window_key) WHERE status = 'succeeded';
CREATE INDEX job_runs_job_started_idx ON ops.job_runs (job_name, started_at DESC);
CREATE INDEX job_runs_window_idx ON ops.job_runs (job_name, window_key);

CREATE TABLE ops.notification_outbox (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key     text NOT NULL UNIQUE,
    kind                text NOT NULL,
    tenant_id           uuid,
    recipient           text NOT NULL,
    payload             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    provider_message_id text,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed')),
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    claimed_by          text,
    claimed_at          timestamptz
);
CREATE INDEX notification_outbox_pending_idx ON ops.notification_outbox (kind, id)
    WHERE status = 'pending';
CREATE INDEX notification_outbox_sending_idx ON ops.notification_outbox (claimed_at)
    WHERE status = 'sending';

CREATE TABLE ops.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    job_name    text,
    run_id      text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_occurred_idx ON ops.audit_log (occurred_at);

CREATE TABLE ops.analytics_hourly (
    tenant_id    uuid NOT NULL,
    hour_start   timestamptz NOT NULL,
    event_type   text NOT NULL,
    event_count  bigint NOT NULL,
    unique_users bigint NOT NULL,
    PRIMARY KEY (tenant_id, hour_start, event_type)
);
CREATE INDEX analytics_hourly_hour_idx ON ops.analytics_hourly (hour_start);

CREATE TABLE ops.tenant_health_daily (
    tenant_id          uuid NOT NULL,
    day                date NOT NULL,
    milestones_at_risk integer NOT NULL,
    overdue_tasks      integer NOT NULL,
    active_share_links integer NOT NULL,
    share_link_views   bigint NOT NULL,
    status             text NOT NULL CHECK (status IN ('green', 'amber', 'red')),
    PRIMARY KEY (tenant_id, day)
);

CREATE TABLE ops.residency_reports (
    week_start   date PRIMARY KEY,
    generated_at timestamptz NOT NULL DEFAULT now(),
    storage_uri  text NOT NULL,
    sha256       text NOT NULL,
    row_count    integer NOT NULL,
    compliant    boolean NOT NULL,
    emailed_at   timestamptz
);

CREATE TABLE ops.backup_drills (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    method      text NOT NULL CHECK (method IN ('local', 'neon')),
    checks      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error       text
);
