-- A dead letter discarded for good is a state of its own. The portal's status values are
-- fixed ('pending', 'replayed', 'dead'), so the discard lives here: such a letter is never
-- requeued by `dlq requeue --all-dead`, and `dlq list` shows it as discarded.
CREATE TABLE ops.dlq_discards (
    dlq_id       bigint PRIMARY KEY,
    actor        text NOT NULL,
    reason       text NOT NULL,
    discarded_at timestamptz NOT NULL DEFAULT now()
);

-- Letters discarded before this table existed said so only in last_error (the portal's
-- table may not exist yet where only `ops` is migrated).
DO $$
BEGIN
    IF to_regclass('portal.mux_webhook_dlq') IS NOT NULL THEN
        INSERT INTO ops.dlq_discards (dlq_id, actor, reason, discarded_at)
        SELECT id,
               split_part(substr(last_error, length('discarded by ') + 1), ': ', 1),
               substr(last_error, strpos(last_error, ': ') + 2),
               coalesce(escalated_at, received_at)
          FROM portal.mux_webhook_dlq
         WHERE status = 'dead' AND last_error LIKE 'discarded by %: %'
        ON CONFLICT (dlq_id) DO NOTHING;
    END IF;
END $$;
