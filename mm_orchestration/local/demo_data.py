"""Realistic demo data for every table of the portal contract, generated in the database.

Everything is made by set-based `INSERT ... SELECT` over `generate_series`, so
`--scale 100` builds benchmark-sized data in seconds rather than row by row.
Times are relative to now(): some share links are already due, some invitations are
older than 72 hours, some bounces older than 30 days.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

TENANTS = [
    ("Kangaroo Creative", "kangaroo-creative", "active", "ap-southeast-2"),
    ("Bondi Pictures", "bondi-pictures", "active", "ap-southeast-2"),
    ("Southern Cross Studio", "southern-cross-studio", "active", "ap-southeast-4"),
    ("Harbour Light Films", "harbour-light-films", "active", "ap-southeast-2"),
    ("Outback Motion", "outback-motion", "suspended", "ap-southeast-2"),
    ("Pacific Rim Media", "pacific-rim-media", "active", "us-west-2"),
]

FIRST_NAMES = ["Olivia", "Jack", "Charlotte", "Noah", "Amelia", "William", "Isla", "Oliver"]
EVENT_TYPES = [
    "asset.viewed",
    "comment.added",
    "share_link.opened",
    "upload.completed",
    "approval.granted",
    "task.completed",
]


@dataclass(frozen=True)
class SeedCounts:
    tenants: int
    users: int
    share_links: int
    events: int


def seed_demo(conn: psycopg.Connection, scale: int = 1) -> SeedCounts:
    """Insert demo rows (in the caller's transaction). `scale` multiplies every count."""
    if scale < 1:
        raise ValueError("--scale must be 1 or more")
    params = {
        "scale": scale,
        "names": [t[0] for t in TENANTS],
        "slugs": [t[1] for t in TENANTS],
        "statuses": [t[2] for t in TENANTS],
        "regions": [t[3] for t in TENANTS],
        "first_names": FIRST_NAMES,
        "event_types": EVENT_TYPES,
    }
    conn.execute("SELECT setseed(0.42)")
    for statement in _STATEMENTS:
        conn.execute(statement, params)
    row = conn.execute(
        """SELECT (SELECT count(*) FROM portal.tenants), (SELECT count(*) FROM portal.users),
                  (SELECT count(*) FROM portal.share_links), (SELECT count(*) FROM portal.events)"""
    ).fetchone()
    assert row is not None
    return SeedCounts(*row)


_STATEMENTS: list[str] = [
    # Tenants: the six named agencies, then numbered copies for larger scales.
    """
    INSERT INTO portal.tenants (name, slug, status, data_region, created_at)
    SELECT CASE WHEN s = 1 THEN n.name ELSE n.name || ' ' || s END,
           CASE WHEN s = 1 THEN n.slug ELSE n.slug || '-' || s END,
           n.status, n.region, now() - interval '400 days'
      FROM generate_series(1, %(scale)s) AS s,
           unnest(%(names)s::text[], %(slugs)s::text[], %(statuses)s::text[],
                  %(regions)s::text[]) AS n(name, slug, status, region)
    """,
    # Eight people per agency, across Australian time zones; one opted out, one deactivated.
    # Their digest choices vary: most daily at 08:00, one weekdays at 07:30, one weekly on
    # Mondays at 09:00, one daily at 17:45, one off.
    """
    INSERT INTO portal.users (tenant_id, email, display_name, digest_opt_in, timezone,
                              digest_frequency, digest_time, digest_weekday,
                              created_at, deactivated_at)
    SELECT t.id,
           lower((%(first_names)s::text[])[i]) || '@' || t.slug || '.example.com',
           (%(first_names)s::text[])[i] || ' of ' || t.name,
           i <> 7,
           (ARRAY['Australia/Sydney','Australia/Melbourne','Australia/Brisbane',
                  'Australia/Perth','Australia/Adelaide','Pacific/Auckland',
                  'Australia/Sydney','Australia/Hobart'])[i],
           (ARRAY['daily','weekdays','daily','weekly','daily','off','daily','daily'])[i],
           (ARRAY['08:00','07:30','17:45','09:00','08:00','08:00','08:00','08:00'])[i]::time,
           1,
           now() - interval '300 days',
           CASE WHEN i = 8 THEN now() - interval '10 days' END
      FROM portal.tenants t, generate_series(1, 8) AS i
    """,
    """
    INSERT INTO portal.projects (tenant_id, name, status, created_at)
    SELECT t.id, (ARRAY['Summer Campaign','Brand Refresh','Product Launch'])[i],
           CASE WHEN i = 3 THEN 'archived' ELSE 'active' END, now() - interval '200 days'
      FROM portal.tenants t, generate_series(1, 3) AS i
    """,
    """
    INSERT INTO portal.milestones (tenant_id, project_id, name, due_at, completed_at)
    SELECT p.tenant_id, p.id, (ARRAY['Storyboard','Rough cut','Fine cut','Final delivery'])[i],
           now() + make_interval(hours => (i * 40) - 90 + (random() * 48)::int),
           CASE WHEN i = 1 THEN now() - interval '5 days' END
      FROM portal.projects p, generate_series(1, 4) AS i
    """,
    """
    INSERT INTO portal.tasks (tenant_id, project_id, assignee_id, title, due_at, completed_at)
    SELECT p.tenant_id, p.id, u.id, 'Review ' || (ARRAY['colour grade','sound mix','captions',
           'titles','client notes'])[1 + (i %% 5)] || ' #' || i,
           now() + make_interval(hours => (random() * 120)::int - 48),
           CASE WHEN random() < 0.3 THEN now() - interval '1 day' END
      FROM portal.projects p
      JOIN LATERAL (SELECT id FROM portal.users WHERE tenant_id = p.tenant_id
                     ORDER BY random() LIMIT 1) u ON true,
           generate_series(1, 12) AS i
    """,
    """
    INSERT INTO portal.media_assets (tenant_id, project_id, title, mux_asset_id, mux_upload_id,
                                     mux_playback_id, status, status_changed_at,
                                     duration_seconds, storage_region, created_at, updated_at)
    SELECT p.tenant_id, p.id, p.name || ' - cut ' || i,
           CASE WHEN i <> 10 THEN 'mux-asset-' || md5(p.id::text || i) END,
           'mux-upload-' || md5(p.id::text || i || 'u'),
           CASE WHEN i < 8 THEN 'play-' || left(md5(p.id::text || i || 'p'), 16) END,
           CASE WHEN i < 8 THEN 'ready' WHEN i = 8 THEN 'errored'
                WHEN i = 9 THEN 'preparing' ELSE 'waiting' END,
           now() - make_interval(hours => i * 7),
           CASE WHEN i < 8 THEN 30 + i * 11.5 END,
           t.data_region, now() - interval '30 days', now() - make_interval(hours => i * 7)
      FROM portal.projects p JOIN portal.tenants t ON t.id = p.tenant_id,
           generate_series(1, 10) AS i
    """,
    # Two links per ready video: some already due, some revoked, some expiring next week.
    """
    INSERT INTO portal.share_links (tenant_id, media_asset_id, created_by, created_at,
                                    expires_at, status, view_count)
    SELECT a.tenant_id, a.id, u.id, now() - interval '20 days',
           now() + make_interval(hours => (random() * 240)::int - 60),
           CASE WHEN random() < 0.1 THEN 'revoked' ELSE 'active' END,
           (random() * 40)::int
      FROM portal.media_assets a
      JOIN LATERAL (SELECT id FROM portal.users WHERE tenant_id = a.tenant_id
                     AND deactivated_at IS NULL ORDER BY random() LIMIT 1) u ON true,
           generate_series(1, 2)
     WHERE a.status = 'ready'
    """,
    """
    INSERT INTO portal.share_link_tokens (share_link_id, token_hash, issued_at)
    SELECT l.id, encode(sha256((l.id::text || i)::bytea), 'hex'), l.created_at + interval '1 hour'
      FROM portal.share_links l, generate_series(1, 2) AS i
    """,
    """
    INSERT INTO portal.invitations (tenant_id, email, invited_by, role, status, created_at)
    SELECT t.id, 'guest' || i || '@client-of-' || t.slug || '.example.com',
           (SELECT id FROM portal.users WHERE tenant_id = t.id LIMIT 1),
           (ARRAY['viewer','reviewer','editor'])[1 + i %% 3],
           CASE WHEN i = 5 THEN 'accepted' ELSE 'pending' END,
           now() - make_interval(hours => i * 20)
      FROM portal.tenants t, generate_series(1, 5) AS i
    """,
    """
    INSERT INTO portal.email_suppressions (email, reason, created_at, source)
    SELECT 'bounced' || i || '@old-agency.example.com',
           (ARRAY['bounce','bounce','spam_report','unsubscribe','invalid'])[1 + i %% 5],
           now() - make_interval(days => i * 4), 'sendgrid-webhook'
      FROM generate_series(1, 12 * %(scale)s) AS i
    """,
    # A week of analytics events: about 40 an hour per agency, some without a user.
    """
    INSERT INTO portal.events (tenant_id, user_id, event_type, occurred_at, properties)
    SELECT u.tenant_id, CASE WHEN random() < 0.15 THEN NULL ELSE u.id END,
           (%(event_types)s::text[])[1 + (random() * 5)::int],
           date_trunc('hour', now()) - make_interval(hours => h)
               + make_interval(secs => random() * 3599),
           jsonb_build_object('source', 'demo')
      FROM portal.users u, generate_series(0, 167) AS h, generate_series(1, 5) AS k
     WHERE u.deactivated_at IS NULL
    """,
    # A few Mux events the portal's webhook handler failed to process.
    """
    INSERT INTO portal.mux_webhook_dlq (event_id, event_type, payload, received_at, attempts,
                                        status, last_error, next_attempt_at)
    SELECT 'demo-' || md5(a.id::text), 'video.asset.ready',
           jsonb_build_object(
               'type', 'video.asset.ready', 'id', 'demo-' || md5(a.id::text),
               'created_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'object', jsonb_build_object('type', 'asset', 'id', a.mux_asset_id),
               'environment', jsonb_build_object('name', 'Production', 'id', 'demo'),
               'data', jsonb_build_object('id', a.mux_asset_id, 'status', 'ready',
                   'upload_id', a.mux_upload_id, 'duration', 62.4,
                   'playback_ids', jsonb_build_array(
                       jsonb_build_object('id', 'play-' || left(md5(a.id::text), 12),
                                          'policy', 'signed')))),
           now() - interval '20 minutes', 1, 'pending', 'portal handler timed out',
           now() - interval '1 minute'
      FROM (SELECT * FROM portal.media_assets WHERE status = 'preparing'
             ORDER BY id LIMIT 4) a
    """,
    """
    INSERT INTO portal.mux_webhook_dlq (event_id, event_type, payload, received_at, status,
                                        last_error)
    VALUES ('demo-broken-envelope', 'video.asset.ready', '{"type": "video.asset.ready"}',
            now() - interval '1 hour', 'pending', 'portal handler: missing data')
    ON CONFLICT (event_id) DO NOTHING
    """,
]
