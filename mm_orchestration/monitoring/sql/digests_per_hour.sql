-- Digests sent in each hour of the last 24 (the hours as MM_TIMEZONE reads them, the current one so far), zero hours included so the chart has no gaps.
-- Hours are instants an hour apart from a local hour's start, so a daylight-saving change
-- neither merges two hours nor invents one.
WITH hours AS (
    SELECT h FROM generate_series(
        date_trunc('hour', %(now)s::timestamptz - interval '23 hours', %(tz)s),
        %(now)s::timestamptz, interval '1 hour') h
)
SELECT hours.h, count(o.id)
  FROM hours
  LEFT JOIN ops.notification_outbox o
    ON o.kind = 'digest' AND o.status = 'sent'
   AND o.sent_at >= hours.h AND o.sent_at < hours.h + interval '1 hour'
   AND o.sent_at <= %(now)s::timestamptz
 GROUP BY hours.h ORDER BY hours.h
