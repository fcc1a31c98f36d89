"""The least privilege the jobs need: `mm-jobs grants ROLE [--apply]`.

On `portal` (the portal application's schema): SELECT on every table (the jobs read
them, and the restore drill's pg_dump reads them all), UPDATE only on the columns the
jobs change, DELETE only on `email_suppressions`. On `ops` (ours): everything but
changing the audit trail, which it may only append to (APPEND_ONLY), and the compliance
evidence, which it may add to but not delete (EVIDENCE); no CREATE there. The role also needs
CREATEDB for the restore drill's scratch database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
# The audit trail (migration 0016): entries are inserted and read, never changed. Links and
# the chain's head are written only by the chain's trigger function, which runs as their
# owner (SECURITY DEFINER) as a transaction that wrote entries commits: this role only
# reads them. The trigger `ops.audit_guard` refuses every other write, even the owner's
# (docs/audit.md).
APPEND_ONLY: dict[str, tuple[str, ...]] = {
    "audit_entries": ("SELECT", "INSERT"),
    "audit_log": ("SELECT", "INSERT"),
    "audit_chain": ("SELECT",),
    "audit_chain_head": ("SELECT",),
}
# Compliance evidence on `ops`: written by its job, read back, never deleted. A residency
# report of a week is replaced by a rerun of the week (its upsert) and learns when it was
# emailed; a restore drill and an evidence bundle are never changed once recorded.
EVIDENCE: dict[str, tuple[str, ...]] = {
    "backup_drills": (),
    "evidence_bundles": (),
    "residency_reports": (
        "generated_at",
        "storage_uri",
        "sha256",
        "row_count",
        "compliant",
        "html_uri",
        "html_sha256",
        "exceptions",
        "emailed_at",
    ),
}


OWNS_OPS = """
SELECT EXISTS (SELECT 1 FROM pg_roles r, pg_namespace n
                WHERE r.rolname = %s AND n.nspname = 'ops'
                  AND pg_has_role(r.oid, n.nspowner, 'USAGE'))
"""


def statements(role: str, owns_ops: bool = False) -> list[sql.Composed]:
    """The grants for `role`. A role that owns `ops` (it runs the migrations) keeps its
    tables there: revoking its own privileges would stop the audit chain's trigger, which
    runs as the owner; only the trigger `ops.audit_guard` then protects the trail."""
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
    if owns_ops:
        return out
    out += [
        # Objects on `ops` are the migrations' (its owner's): this role creates none there
        # (a table or function of its own there could run as anything reading `ops`).
        sql.SQL("REVOKE CREATE ON SCHEMA ops FROM {}").format(r),
        sql.SQL("GRANT USAGE ON SCHEMA ops TO {}").format(r),
        sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA ops TO {}").format(r),
        sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA ops TO {}").format(r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA ops GRANT ALL ON TABLES TO {}").format(r),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA ops GRANT ALL ON SEQUENCES TO {}").format(r),
    ]
    for table, privileges in APPEND_ONLY.items():
        out += _only(sql.Identifier("ops", table), r, privileges)
    # The entries' ids only as their identity draws them (each entry's check compares
    # with currval): no setval to draw one again, or one left free between others.
    out += [
        sql.SQL("REVOKE ALL ON SEQUENCE ops.audit_log_id_seq FROM {}").format(r),
        sql.SQL("GRANT SELECT ON SEQUENCE ops.audit_log_id_seq TO {}").format(r),
    ]
    for table, columns in EVIDENCE.items():
        name = sql.Identifier("ops", table)
        out += _only(name, r, ("SELECT", "INSERT"))
        if columns:
            out.append(
                sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns), name, r
                )
            )
    return out


def _only(table: sql.Composable, role: sql.Composable, privileges: Iterable[str]) -> list[Any]:
    """`role` gets exactly `privileges` on `table` (whatever it had before is revoked)."""
    return [
        sql.SQL("REVOKE ALL ON {} FROM {}").format(table, role),
        sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in privileges), table, role
        ),
    ]
