-- Rows left 'sending' by a deliverer that is gone (its run finished, its claim past the lease, or this run's own) fail with their outcome unknown.
UPDATE ops.notification_outbox
   SET status = 'failed', outcome_unknown = true,
       failed_at = now(), failed_run_id = %(run_id)s,
       last_error = 'delivery outcome unknown: the deliverer (run '
                    || coalesce(claimed_by, '?') || ') stopped mid-send. '
                    || replace(%(hint)s, '{key}', idempotency_key)
 WHERE status = 'sending' AND kind = ANY(%(kinds)s)
   AND (claimed_at < now() - %(lease)s::interval
        OR claimed_by = ANY(%(gone)s))
