-- Apply a status event to one video, unless the video already has a later event (or as old and later in the lifecycle).
UPDATE portal.media_assets
   SET status = %(status)s,
       status_changed_at = %(created_at)s,
       updated_at = now(),
       mux_asset_id = coalesce(mux_asset_id, %(asset_id)s),
       duration_seconds = coalesce(%(duration)s, duration_seconds),
       mux_playback_id = coalesce(%(playback_id)s, mux_playback_id)
 WHERE id = %(id)s
   AND (status_changed_at IS NULL OR status_changed_at < %(created_at)s
        OR (status_changed_at = %(created_at)s AND %(rank)s >= {status_rank}))
