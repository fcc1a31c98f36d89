-- Close a pending or dead letter for good: dead, never retried, never escalated, with who discarded it and why.
UPDATE portal.mux_webhook_dlq
   SET status = 'dead', next_attempt_at = NULL,
       escalated_at = coalesce(escalated_at, now()),
       last_error = 'discarded by ' || %s || ': ' || %s
 WHERE id = %s AND status IN ('pending', 'dead')
RETURNING id, event_id, event_type, payload::text
