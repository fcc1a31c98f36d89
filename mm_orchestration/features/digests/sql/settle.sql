-- Settle every due choice's people at once: the period rows, and for those with something to report the outbox email; returns the counts.
WITH due AS (
    SELECT * FROM unnest(%(choice_key)s::text[], %(zone)s::text[], %(fell_back)s::bool[],
                         %(period)s::text[], %(moment)s::timestamptz[],
                         %(starts)s::timestamptz[], %(ends)s::timestamptz[],
                         %(action)s::text[], %(since_default)s::timestamptz[],
                         %(local_date)s::date[], %(horizon)s::timestamptz[], %(shift)s::text[])
        AS d(choice_key, zone, fell_back, period, moment, starts, ends, action,
             since_default, local_date, horizon, shift)
), people AS MATERIALIZED (
    SELECT e.id, e.tenant_id, e.email, e.display_name, e.tenant_name, d.zone,
           d.fell_back, d.period, d.moment, d.action, d.since_default, d.local_date,
           d.horizon, d.shift
      FROM ({eligible}) e
      JOIN portal.users u ON u.id = e.id
      JOIN due d ON d.choice_key = {raw}
     -- At most one digest per period of theirs (a span of instants in the zone they have
     -- now), whatever zone, time or frequency an earlier one was settled in.
     WHERE NOT EXISTS (SELECT 1 FROM ops.digest_periods r
                        WHERE r.user_id = e.id AND r.moment >= d.starts AND r.moment < d.ends)
       -- A moment from before the run's window (a group someone joined): only after
       -- their last digest, and never before they existed.
       AND CASE WHEN d.moment > %(window_start)s THEN true
                ELSE d.moment > coalesce((SELECT max(r.moment) FROM ops.digest_periods r
                                           WHERE r.user_id = e.id), u.created_at)
           END
), senders AS MATERIALIZED (
    SELECT p.*, {since} AS since, {suppressed} AS suppressed
      FROM people p WHERE p.action = 'send'
), digests AS MATERIALIZED ({content}
), queued AS (
    INSERT INTO ops.notification_outbox
        (idempotency_key, kind, tenant_id, recipient, payload, user_id, next_attempt_at)
    SELECT 'digest:' || d.id || ':' || d.period, %(kind)s, d.tenant_id, d.email, {payload}, d.id,
           -- due as of the run's instant (a rerun of an earlier tick included), never later
           least(now(), %(now)s::timestamptz)
      FROM digests d
     WHERE NOT d.suppressed
       AND (d.due_soon IS NOT NULL OR d.overdue IS NOT NULL OR d.updates IS NOT NULL)
        ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
), settled AS (
    INSERT INTO ops.digest_periods (user_id, period, moment, outcome, settled_at, run_id)
    SELECT p.id, p.period, p.moment, 'missed', %(now)s, %(run_id)s
      FROM people p WHERE p.action = 'missed'
    UNION ALL  -- (not a join of the two: CTEs have no index, and that join was quadratic)
    SELECT d.id, d.period, d.moment,
           CASE WHEN d.suppressed THEN 'suppressed'
                WHEN d.due_soon IS NOT NULL OR d.overdue IS NOT NULL OR d.updates IS NOT NULL
                    THEN 'queued'
                ELSE 'skipped' END,
           %(now)s, %(run_id)s
      FROM digests d
        ON CONFLICT (user_id, period) DO NOTHING
    RETURNING outcome
)
SELECT (SELECT count(*) FROM people WHERE action = 'send'),
       (SELECT count(*) FROM queued),
       (SELECT count(*) FROM settled WHERE outcome = 'queued'),
       (SELECT count(*) FROM settled WHERE outcome = 'skipped'),
       (SELECT count(*) FROM settled WHERE outcome = 'suppressed'),
       (SELECT count(*) FROM settled WHERE outcome = 'missed'),
       (SELECT count(DISTINCT id) FROM people WHERE fell_back),
       (SELECT coalesce(array_agg(id::text ORDER BY id), '{{}}')
          FROM (SELECT DISTINCT id FROM people WHERE fell_back
                 ORDER BY id LIMIT {ids_shown}) f),
       (SELECT count(*) FROM people WHERE shift = 'moved'),
       (SELECT count(*) FROM people WHERE shift = 'merged')
