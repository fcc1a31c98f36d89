-- Rows that did not go, newest first, each with its state (failed, unknown, sending, stale, waiting, expired) and why; no addresses.
SELECT id, idempotency_key, kind,
       CASE WHEN status = 'sending' AND claimed_at < now() - %(lease)s::interval
                 THEN 'stale'
            WHEN status = 'sending' THEN 'sending'
            WHEN status = 'pending' THEN 'waiting'
            WHEN status = 'expired' THEN 'expired'
            WHEN outcome_unknown THEN 'unknown'
            ELSE 'failed' END AS state,
       coalesce(failed_at, claimed_at) AS at, failed_run_id, claimed_by,
       attempts, last_error
  FROM ops.notification_outbox
 WHERE (status = 'sending'
        OR (status = 'failed' AND (NOT %(unknown)s OR outcome_unknown))
        OR (NOT %(unknown)s AND status = 'pending' AND last_error IS NOT NULL)
        OR (NOT %(unknown)s AND status = 'expired'))
   AND (%(kind)s::text IS NULL OR kind = %(kind)s)
 ORDER BY coalesce(failed_at, claimed_at, created_at) DESC, id DESC
 LIMIT %(limit)s
