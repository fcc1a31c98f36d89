-- Back to pending, attempts reset and escalation re-armed: the named letters, or every dead one not discarded; a named discarded one is undiscarded.
WITH chosen AS (
    SELECT q.id FROM portal.mux_webhook_dlq q
     WHERE q.status IN ('pending', 'dead')
       AND (q.id = ANY(%(ids)s)
            OR (%(all_dead)s AND q.status = 'dead'
                AND NOT EXISTS (SELECT 1 FROM ops.dlq_discards d
                                 WHERE d.dlq_id = q.id)))
), undiscarded AS (
    DELETE FROM ops.dlq_discards d USING chosen c WHERE d.dlq_id = c.id
    RETURNING d.dlq_id
)
UPDATE portal.mux_webhook_dlq q
   SET status = 'pending', attempts = 0, next_attempt_at = now(),
       escalated_at = NULL, replayed_at = NULL
  FROM chosen c
 WHERE q.id = c.id
RETURNING q.id, q.event_id,
          EXISTS (SELECT 1 FROM undiscarded u WHERE u.dlq_id = q.id)
