-- Find an event's video by its Mux asset id, else by its upload id (to link it): one row, locked.
SELECT id, mux_asset_id, status_changed_at, status FROM portal.media_assets
 WHERE mux_asset_id = %(asset_id)s
    OR (mux_upload_id = %(upload_id)s AND %(upload_id)s IS NOT NULL
        AND (mux_asset_id IS NULL OR mux_asset_id = %(asset_id)s))
 ORDER BY (mux_asset_id = %(asset_id)s) DESC NULLS LAST
 LIMIT 1
 FOR UPDATE
