-- Apply a batch of status events to the videos found by their Mux asset id, each with its own dead-letter row, in one statement.
-- Same statement, same transaction. Events whose video is not found by asset id are left for
-- the per-event path. An event as old as the video's last one applies only if it is not
-- earlier in the lifecycle.
WITH ev AS (
    SELECT * FROM unnest(%(dlq_ids)s::bigint[], %(asset_ids)s::text[], %(statuses)s::text[],
                         %(ranks)s::int[], %(created)s::timestamptz[], %(durations)s::numeric[],
                         %(playbacks)s::text[])
             AS e(dlq_id, asset_id, status, rank, created_at, duration, playback_id)
), applied AS (
    UPDATE portal.media_assets m
       SET status = e.status, status_changed_at = e.created_at, updated_at = now(),
           duration_seconds = coalesce(e.duration, m.duration_seconds),
           mux_playback_id = coalesce(e.playback_id, m.mux_playback_id)
      FROM ev e
     WHERE m.mux_asset_id = e.asset_id
       AND (m.status_changed_at IS NULL OR m.status_changed_at < e.created_at
            OR (m.status_changed_at = e.created_at AND e.rank >= {status_rank}))
    RETURNING e.dlq_id
), matched AS (
    SELECT e.dlq_id FROM ev e JOIN portal.media_assets m ON m.mux_asset_id = e.asset_id
)
UPDATE portal.mux_webhook_dlq d
   SET status = 'replayed', replayed_at = now(), next_attempt_at = NULL,
       last_error = CASE WHEN a.dlq_id IS NULL
                         THEN 'acknowledged: stale, nothing changed' END
  FROM matched mt LEFT JOIN applied a ON a.dlq_id = mt.dlq_id
 WHERE d.id = mt.dlq_id
RETURNING d.id, d.event_id, a.dlq_id IS NOT NULL
