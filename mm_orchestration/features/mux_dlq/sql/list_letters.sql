-- The dead letters newest first, a discarded one shown as 'discarded' with who discarded it and why, optionally of one status.
SELECT * FROM (
    SELECT q.id, q.event_id, q.event_type,
           CASE WHEN d.dlq_id IS NULL THEN q.status ELSE 'discarded' END AS status,
           q.attempts, q.received_at, q.next_attempt_at,
           left(CASE WHEN d.dlq_id IS NULL THEN q.last_error
                     ELSE 'discarded by ' || d.actor || ': ' || d.reason END,
                120) AS last_error
      FROM portal.mux_webhook_dlq q
      LEFT JOIN ops.dlq_discards d ON d.dlq_id = q.id) AS letters
 WHERE %(status)s::text IS NULL OR status = %(status)s
 ORDER BY id DESC LIMIT %(limit)s
