-- Fail each pending (or sending) row with its own reason, in one statement; returns the ids failed.
UPDATE ops.notification_outbox o
   SET status = 'failed', last_error = f.error, failed_at = now(),
       failed_run_id = %(run_id)s, outcome_unknown = false
  FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS f(id, error)
 WHERE o.id = f.id
   AND o.status = ANY(%(from)s)
RETURNING o.id
