-- The rows of the kinds that failed for good in one run, grouped by reason, with the unknown ones' keys and three examples.
SELECT CASE WHEN outcome_unknown THEN 'outcome unknown'
            ELSE split_part(coalesce(last_error, 'failed'), ':', 1) END,
       count(*),
       (array_agg(idempotency_key ORDER BY id)
           FILTER (WHERE outcome_unknown))[1:%(shown)s],
       (array_agg(idempotency_key || ': ' || coalesce(last_error, '')
                  ORDER BY id))[1:3]
  FROM ops.notification_outbox
 WHERE failed_run_id = %(run_id)s AND status = 'failed'
   AND kind = ANY(%(kinds)s)
 GROUP BY 1 ORDER BY 2 DESC, 1
