-- Claim a batch of due dead letters (pending, next attempt passed) after a given id, skipping rows another run holds, with their envelope fields picked out of the payload.
-- The payload's fields come out as short texts (events.envelope_fields_sql): a 1,500-level
-- document or a 5,001-digit number is read like any other. The body and signature are fetched
-- only when a signing secret is set, and then the payload must be the signed body itself
-- (compared as jsonb), since it is the payload's fields that are applied. A run walks the
-- queue forward by id, so no batch scans the rows earlier batches settled, and a row fails at
-- most once per run. Attempts are read within 0..1,000,000 so a row holding a negative or the
-- largest integer still gets its failed attempt written (as dead) instead of overflowing.
SELECT id, event_id, left(event_type, 255), least(greatest(attempts, 0), 1000000),
       CASE WHEN %(verify)s THEN raw_body END, CASE WHEN %(verify)s THEN signature END,
       CASE WHEN %(verify)s THEN ops.jsonb_or_null(raw_body) IS NOT NULL END,
       CASE WHEN %(verify)s THEN ops.jsonb_or_null(raw_body) = payload END,
       now(),
       {fields}
  FROM portal.mux_webhook_dlq
 WHERE status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
   AND id > %(after)s
 ORDER BY id
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED
