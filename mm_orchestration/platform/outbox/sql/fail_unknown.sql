-- Fail rows whose request was written and its answer lost: outcome unknown, the key named, never resent automatically.
UPDATE ops.notification_outbox
   SET status = 'failed', outcome_unknown = true, failed_at = now(),
       failed_run_id = %s,
       last_error = 'delivery outcome unknown: ' || %s || '. '
                    || replace(%s, '{key}', idempotency_key)
 WHERE id = ANY(%s) AND status = 'sending'
