-- Mark pending rows 'suppressed', each with its suppression's reason; returns the ids marked.
UPDATE ops.notification_outbox o
   SET status = 'suppressed',
       last_error = 'recipient is on portal.email_suppressions (' || s.reason || ')'
  FROM unnest(%s::bigint[], %s::text[]) AS s(id, reason)
 WHERE o.id = s.id AND o.status = 'pending'
RETURNING o.id
