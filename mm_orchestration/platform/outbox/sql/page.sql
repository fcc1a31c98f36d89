-- Up to a limit of due pending rows of the kinds with ids above a given one, in id order (not claimed).
SELECT o.id, o.idempotency_key, o.kind, o.tenant_id, o.recipient, {payload}
  FROM (SELECT id FROM ops.notification_outbox
         WHERE status = 'pending' AND {kind}
           AND next_attempt_at <= now() AND id > %s
         ORDER BY id LIMIT %s) due
  JOIN ops.notification_outbox o ON o.id = due.id
 ORDER BY due.id
