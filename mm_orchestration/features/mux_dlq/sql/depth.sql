-- The dead-letter queue's depth: letters still to replay, and dead ones nobody has
-- discarded (the depth sensor pages on it; the job-health dashboard shows it).
SELECT count(*) FROM portal.mux_webhook_dlq q
 WHERE q.status = 'pending'
    OR (q.status = 'dead'
        AND NOT EXISTS (SELECT 1 FROM ops.dlq_discards d WHERE d.dlq_id = q.id))
