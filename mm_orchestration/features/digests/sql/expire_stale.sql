-- Digests still pending whose moment came before the cut-off expire, never sent stale, and their periods count as missed.
WITH stale AS (
    SELECT o.id, p.user_id, p.period
      FROM ops.notification_outbox o
      JOIN ops.digest_periods p
        ON o.idempotency_key = 'digest:' || p.user_id || ':' || p.period
     WHERE o.kind = %(kind)s AND o.status = 'pending'
       AND p.moment < %(before)s AND o.next_attempt_at < %(before)s
), expired AS (
    UPDATE ops.notification_outbox o
       SET status = 'expired',
           last_error = 'expired: due ' || to_char(p.moment AT TIME ZONE 'UTC',
                        'YYYY-MM-DD HH24:MI "UTC"') || ', and never sent stale'
      FROM stale s JOIN ops.digest_periods p
           ON p.user_id = s.user_id AND p.period = s.period
     WHERE o.id = s.id
), missed AS (
    UPDATE ops.digest_periods p SET outcome = 'missed'
      FROM stale s WHERE p.user_id = s.user_id AND p.period = s.period
)
SELECT count(*) FROM stale
