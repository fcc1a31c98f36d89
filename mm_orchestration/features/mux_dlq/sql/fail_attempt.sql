-- Record a dead letter's failed attempt: count it, keep the error, and back off, or make it dead.
UPDATE portal.mux_webhook_dlq
   SET attempts = %(attempts)s, last_error = %(error)s,
       status = CASE WHEN %(dead)s THEN 'dead' ELSE 'pending' END,
       next_attempt_at = CASE WHEN %(dead)s THEN NULL
                              ELSE now() + make_interval(secs => %(delay)s) END
 WHERE id = %(id)s
