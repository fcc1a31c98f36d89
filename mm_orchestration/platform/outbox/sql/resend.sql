-- Requeue a kind's failed and expired rows since an instant, each to the user's address as it is now (or the one given); returns their keys.
WITH picked AS (
    SELECT id FROM ops.notification_outbox
     WHERE status IN ('failed', 'expired') AND kind = %(kind)s
       AND coalesce(failed_at, created_at) >= %(since)s
       AND (%(unknown)s OR NOT outcome_unknown)
     ORDER BY id
       FOR UPDATE
), requeued AS (
    UPDATE ops.notification_outbox o
       SET status = 'pending', next_attempt_at = now(), claimed_by = NULL,
           recipient = coalesce(%(to)s, {fresh}, o.recipient),
           last_error = 'requeued by ' || %(actor)s || ' after: '
                        || coalesce(o.last_error, ''),
           outcome_unknown = false, failed_at = NULL, failed_run_id = NULL
      FROM picked WHERE o.id = picked.id
  RETURNING o.idempotency_key
)
SELECT idempotency_key FROM requeued ORDER BY idempotency_key
