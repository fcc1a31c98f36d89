-- Digests sent, and periods recorded as missed (later than the grace after downtime: never sent stale), over the last day and week.
SELECT sent.day, sent.week, missed.day, missed.week
  FROM (SELECT count(*) FILTER (WHERE o.sent_at >= %(now)s::timestamptz - %(day)s) AS day,
               count(*) AS week
          FROM ops.notification_outbox o
         WHERE o.kind = 'digest' AND o.status = 'sent'
           AND o.sent_at >= %(now)s::timestamptz - %(week)s AND o.sent_at <= %(now)s) sent,
       (SELECT count(*) FILTER (WHERE r.settled_at >= %(now)s::timestamptz - %(day)s) AS day,
               count(*) AS week
          FROM ops.digest_periods r
         WHERE r.outcome = 'missed'
           AND r.settled_at >= %(now)s::timestamptz - %(week)s AND r.settled_at <= %(now)s) missed
