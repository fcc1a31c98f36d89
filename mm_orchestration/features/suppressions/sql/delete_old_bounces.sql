-- Delete bounces older than the retention, and count and hash their addresses in the database (the addresses only when asked for).
-- The addresses never leave the database unless SendGrid needs them.
WITH deleted AS (
    DELETE FROM portal.email_suppressions
     WHERE reason = 'bounce' AND created_at < now() - %(retention)s::interval
    RETURNING lower(email) AS email
), addresses AS (
    SELECT DISTINCT email FROM deleted
)
SELECT (SELECT count(*) FROM deleted),
       (SELECT count(*) FROM addresses),
       (SELECT coalesce(array_agg(h ORDER BY h), '{}')
          FROM (SELECT encode(sha256(convert_to(email, 'UTF8')), 'hex') AS h
                  FROM addresses) hashed),
       CASE WHEN %(want_addresses)s
            THEN (SELECT coalesce(array_agg(email ORDER BY email), '{}') FROM addresses) END
