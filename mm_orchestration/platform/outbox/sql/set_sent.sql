-- Mark the rows of accepted requests 'sent', each request's ids with its SendGrid message id, in one statement.
UPDATE ops.notification_outbox o
   SET status = 'sent', sent_at = now(), last_error = NULL,
       provider_message_id = nullif(a.message_id, '')
  FROM unnest(%s::text[], %s::text[]) AS a(ids, message_id)
 CROSS JOIN LATERAL unnest(a.ids::bigint[]) AS s(id)
 WHERE o.id = s.id
