-- Expire every due share link, revoke its tokens and queue one email to its creator, in one statement; returns the counts.
-- Links, tokens and emails change together or not at all. Concurrent runs are safe: the
-- second waits on the first's row locks, then re-checks status = 'active' and finds nothing.
WITH expired AS (
    UPDATE portal.share_links
       SET status = 'expired', expired_at = now()
     WHERE status = 'active' AND expires_at <= now()
 RETURNING id, tenant_id, media_asset_id, created_by, expires_at
), revoked AS (
    UPDATE portal.share_link_tokens t
       SET revoked_at = now()
      FROM expired e
     WHERE t.share_link_id = e.id AND t.revoked_at IS NULL
 RETURNING t.id
), emails AS (
    INSERT INTO ops.notification_outbox
        (idempotency_key, kind, tenant_id, recipient, payload, user_id)
    SELECT 'share-link-expired:' || e.id, %(kind)s, e.tenant_id, u.email,
           jsonb_build_object(
               'link_id', e.id,
               'asset_title', coalesce(a.title, 'your video'),
               'expires_at', e.expires_at,
               'display_name', u.display_name,
               'timezone', u.timezone,
               'user_id', u.id),
           u.id
      FROM expired e
      JOIN portal.users u ON u.id = e.created_by AND u.deactivated_at IS NULL
      LEFT JOIN portal.media_assets a ON a.id = e.media_asset_id
        ON CONFLICT (idempotency_key) DO NOTHING
 RETURNING 1
)
SELECT (SELECT count(*) FROM expired),
       (SELECT count(*) FROM revoked),
       (SELECT count(*) FROM emails),
       (SELECT count(DISTINCT tenant_id) FROM expired)
