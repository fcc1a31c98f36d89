-- The error history of Mux dead letters: one row per failed replay attempt.
-- (portal.mux_webhook_dlq keeps only the last error, and is not ours to alter.)
CREATE TABLE ops.dlq_attempts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dlq_id     bigint NOT NULL,
    event_id   text NOT NULL,
    attempt    integer NOT NULL,
    error      text NOT NULL,
    run_id     text,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dlq_attempts_dlq_idx ON ops.dlq_attempts (dlq_id, attempt);
