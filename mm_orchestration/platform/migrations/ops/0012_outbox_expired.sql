-- 'expired': a message that waited past its use (a digest held by an outage for longer
-- than the digest's grace). Never sent, never retried, counted: as a missed digest is.
ALTER TABLE ops.notification_outbox DROP CONSTRAINT notification_outbox_status_check;
ALTER TABLE ops.notification_outbox ADD CONSTRAINT notification_outbox_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed', 'expired'));
