-- A run's dead letters added to its held escalation email (queued with next_attempt_at
-- 'infinity', so no deliverer reads it): the count summed, the first LETTERS_LISTED kept.
-- Once released (a deliverer may then read it), it is no longer added to: the caller opens
-- another held email instead.
INSERT INTO ops.notification_outbox AS o
       (idempotency_key, kind, recipient, payload, next_attempt_at)
VALUES (%(key)s, %(kind)s, %(recipient)s, %(payload)s, 'infinity')
ON CONFLICT (idempotency_key) DO UPDATE
   SET payload = o.payload
       || jsonb_build_object(
              'count', (o.payload->>'count')::bigint + (EXCLUDED.payload->>'count')::bigint,
              'letters', (SELECT coalesce(jsonb_agg(x.letter ORDER BY x.n), '[]'::jsonb)
                            FROM jsonb_array_elements(
                                     (o.payload->'letters') || (EXCLUDED.payload->'letters'))
                                 WITH ORDINALITY AS x(letter, n)
                           WHERE x.n <= %(listed)s))
 WHERE o.status = 'pending' AND o.next_attempt_at = 'infinity'
