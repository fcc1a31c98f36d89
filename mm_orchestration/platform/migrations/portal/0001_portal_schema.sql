-- The portal application's tables, exactly as the database contract names them.
-- Development, tests and demo only: in production the portal migrates these itself.
CREATE SCHEMA IF NOT EXISTS portal;

CREATE TABLE portal.tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    data_region text NOT NULL DEFAULT 'ap-southeast-2',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE portal.users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES portal.tenants (id),
    email          text NOT NULL,
    display_name   text,
    digest_opt_in  boolean NOT NULL DEFAULT true,
    timezone       text NOT NULL DEFAULT 'Australia/Sydney',
    created_at     timestamptz NOT NULL DEFAULT now(),
    deactivated_at timestamptz
);
CREATE INDEX users_tenant_idx ON portal.users (tenant_id);

CREATE TABLE portal.projects (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES portal.tenants (id),
    name       text NOT NULL,
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE portal.milestones (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES portal.tenants (id),
    project_id   uuid REFERENCES portal.projects (id),
    name         text NOT NULL,
    due_at       timestamptz,
    completed_at timestamptz
);
CREATE INDEX milestones_open_idx ON portal.milestones (tenant_id, due_at) WHERE completed_at IS NULL;

CREATE TABLE portal.tasks (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES portal.tenants (id),
    project_id   uuid REFERENCES portal.projects (id),
    assignee_id  uuid REFERENCES portal.users (id),
    title        text NOT NULL,
    due_at       timestamptz,
    completed_at timestamptz
);
CREATE INDEX tasks_open_assignee_idx ON portal.tasks (assignee_id, due_at) WHERE completed_at IS NULL;
CREATE INDEX tasks_open_tenant_idx ON portal.tasks (tenant_id, due_at) WHERE completed_at IS NULL;

CREATE TABLE portal.media_assets (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES portal.tenants (id),
    project_id        uuid REFERENCES portal.projects (id),
    title             text NOT NULL DEFAULT 'Untitled',
    mux_asset_id      text UNIQUE,
    mux_upload_id     text,
    mux_playback_id   text,
    status            text NOT NULL DEFAULT 'waiting'
                      CHECK (status IN ('waiting', 'preparing', 'ready', 'errored', 'deleted')),
    status_changed_at timestamptz,
    duration_seconds  numeric,
    storage_region    text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_assets_upload_idx ON portal.media_assets (mux_upload_id);
CREATE INDEX media_assets_tenant_idx ON portal.media_assets (tenant_id, status_changed_at);

CREATE TABLE portal.share_links (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES portal.tenants (id),
    media_asset_id uuid REFERENCES portal.media_assets (id),
    created_by     uuid REFERENCES portal.users (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'expired', 'revoked')),
    expired_at     timestamptz,
    view_count     integer NOT NULL DEFAULT 0
);
-- The expiry job's only access path: due links are found without touching the rest.
CREATE INDEX share_links_due_idx ON portal.share_links (expires_at) WHERE status = 'active';
CREATE INDEX share_links_tenant_idx ON portal.share_links (tenant_id);

CREATE TABLE portal.share_link_tokens (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    share_link_id uuid NOT NULL REFERENCES portal.share_links (id),
    token_hash    text NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX share_link_tokens_link_idx ON portal.share_link_tokens (share_link_id);

CREATE TABLE portal.invitations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES portal.tenants (id),
    email      text NOT NULL,
    invited_by uuid REFERENCES portal.users (id),
    role       text NOT NULL DEFAULT 'viewer',
    status     text NOT NULL DEFAULT 'pending'
               CHECK (status IN ('pending', 'accepted', 'expired', 'revoked')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expired_at timestamptz
);
CREATE INDEX invitations_pending_idx ON portal.invitations (created_at) WHERE status = 'pending';

CREATE TABLE portal.email_suppressions (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email      text NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('bounce', 'spam_report', 'unsubscribe', 'invalid')),
    created_at timestamptz NOT NULL DEFAULT now(),
    source     text
);
CREATE INDEX email_suppressions_email_idx ON portal.email_suppressions (lower(email));
CREATE INDEX email_suppressions_bounce_idx ON portal.email_suppressions (created_at)
    WHERE reason = 'bounce';

CREATE TABLE portal.events (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    user_id     uuid,
    event_type  text NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    properties  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_occurred_at_idx ON portal.events (occurred_at);

CREATE TABLE portal.mux_webhook_dlq (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL UNIQUE,
    event_type      text,
    payload         jsonb,
    received_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'replayed', 'dead')),
    last_error      text,
    next_attempt_at timestamptz,
    replayed_at     timestamptz,
    escalated_at    timestamptz,
    raw_body        text,
    signature       text
);
CREATE INDEX mux_webhook_dlq_due_idx ON portal.mux_webhook_dlq (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX mux_webhook_dlq_status_idx ON portal.mux_webhook_dlq (status);
