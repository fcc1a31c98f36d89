"""The least privilege the jobs need: `mm-jobs grants ROLE [--apply]`.

On `portal` (the portal application's schema): SELECT on every table (the jobs read
them, and the restore drill's pg_dump reads them all), UPDATE only on the columns the
jobs change, DELETE only on `email_suppressions`. On `ops` (ours): everything but
changing the audit trail, which it may only append to (APPEND_ONLY). The role also needs
CREATEDB for the restore drill's scratch database.
"""

from __future__ import annotations

from psycopg import sql

# The columns each job changes, and nothing else.
UPDATABLE: dict[str, tuple[str, ...]] = {
    "share_links": ("status", "expired_at"),
    "share_link_tokens": ("revoked_at",),
    "invitations": ("status", "expired_at"),
    "media_assets": (
        "status",
        "status_changed_at",
        "updated_at",
        "mux_asset_id",
        "duration_seconds",
        "mux_playback_id",
    ),
    "mux_webhook_dlq": (
        "status",
        "attempts",
        "last_error",
        "next_attempt_at",
        "replayed_at",
        "escalated_at",
    ),
}
DELETABLE = ("email_suppressions",)
# The audit trail (migration 0016): entries are inserted and read, never changed. A link
# and the chain's head are written only by the chain's own trigger as a transaction that
# wrote entries commits (it runs as that role, so it needs INSERT and UPDATE there); the
# trigger `ops.audit_guard` refuses every other write, even the owner's (docs/audit.md).
APPEND_ONLY: dict[str, tuple[str, ...]] = {
    "audit_entries": ("SELECT", "INSERT"),
    "audit_log": ("SELECT", "INSERT"),
    "audit_chain": ("SELECT", "INSERT"),
    "audit_chain_head": ("SELECT", "INSERT", "UPDATE"),
}


def statements(role: str) -> list[sql.Composed]:
    r = sql.Identifier(role)
    out = [
        sql.SQL("ALTER ROLE {} CREATEDB").format(r),
        sql.SQL("GRANT USAGE ON SCHEMA portal TO {}").format(r),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA portal TO {}").format(r),
        sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA portal TO {}").format(r),
    ]
    for table, columns in UPDATABLE.items():
        out.append(
            sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                sql.Identifier("portal", table),
                r,
            )
        )
    for table in DELETABLE:
        out.append(sql.SQL("GRANT DELETE ON {} TO {}").format(sql.Identifier("portal", table), r))
    out += [
        sql.SQL("GRANT USAGE, CREATE ON SCHEMA ops TO {}").format(r),
        sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA ops TO {}").format(r),
        sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA ops TO {}").format(r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA ops GRANT ALL ON TABLES TO {}").format(r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA ops GRANT ALL ON SEQUENCES TO {}").format(r),
    ]
    for table, privileges in APPEND_ONLY.items():
        name = sql.Identifier("ops", table)
        out += [
            sql.SQL("REVOKE ALL ON {} FROM {}").format(name, r),
            sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), name, r
            ),
        ]
    return out
