-- What the outbox needs to keep its promise against SendGrid's real behaviour (issue 16).
--
-- outcome_unknown: the request carrying this row may have reached SendGrid (it was
--   written, then the answer was lost), so the row is failed and never resent
--   automatically; `mm-jobs outbox list --unknown` lists these rows with their keys.
-- failed_at, failed_run_id: when and by which run a row failed for good, so an op can
--   count every permanent failure of its run across its retries, and an operator can
--   resend the failures of a period (`mm-jobs outbox resend --kind ... --since ...`).
-- user_id: the portal user an email is for, when it is for one: a resend takes the
--   user's address as it is now (after the operator fixed it), never a stale copy.
ALTER TABLE ops.notification_outbox
    ADD COLUMN outcome_unknown boolean NOT NULL DEFAULT false,
    ADD COLUMN failed_at       timestamptz,
    ADD COLUMN failed_run_id   text,
    ADD COLUMN user_id         uuid;

-- Rows marked before this migration said "outcome unknown" only in last_error.
UPDATE ops.notification_outbox
   SET outcome_unknown = true
 WHERE status = 'failed' AND last_error LIKE '%outcome unknown%';

CREATE INDEX notification_outbox_failed_idx ON ops.notification_outbox (kind, failed_at)
    WHERE status = 'failed';
CREATE INDEX notification_outbox_failed_run_idx ON ops.notification_outbox (failed_run_id)
    WHERE status = 'failed';

-- A digest's payload is now its template data exactly as sent, counts included (the
-- delivery no longer decodes and rebuilds it in Python). Digests still waiting get theirs.
UPDATE ops.notification_outbox
   SET payload = payload || jsonb_build_object('counts', jsonb_build_object(
           'due_soon', jsonb_array_length(coalesce(payload->'due_soon', '[]'::jsonb)),
           'overdue', jsonb_array_length(coalesce(payload->'overdue', '[]'::jsonb)),
           'asset_updates', jsonb_array_length(coalesce(payload->'asset_updates', '[]'::jsonb))))
 WHERE kind = 'digest' AND status IN ('pending', 'failed') AND NOT payload ? 'counts';
