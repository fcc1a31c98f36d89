"""Portal rows for tests, inserted with the contract's column names and nothing else."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql


def tenant(
    conn: psycopg.Connection,
    status: str = "active",
    region: str = "ap-southeast-2",
    name: str | None = None,
) -> uuid.UUID:
    slug = f"agency-{uuid.uuid4().hex[:8]}"
    row = conn.execute(
        "INSERT INTO portal.tenants (name, slug, status, data_region) VALUES (%s, %s, %s, %s) "
        "RETURNING id",
        [name or slug.title(), slug, status, region],
    ).fetchone()
    assert row
    return row[0]


def user(
    conn: psycopg.Connection, tenant_id: uuid.UUID, email: str | None = None, **cols: Any
) -> uuid.UUID:
    values = {
        "tenant_id": tenant_id,
        "email": email or f"u{uuid.uuid4().hex[:8]}@agency.example",
        "display_name": "Olivia",
        **cols,
    }
    return _insert(conn, "users", values)


def asset(
    conn: psycopg.Connection,
    tenant_id: uuid.UUID,
    title: str = "Summer Campaign - cut 1",
    **cols: Any,
) -> uuid.UUID:
    return _insert(conn, "media_assets", {"tenant_id": tenant_id, "title": title, **cols})


def share_link(
    conn: psycopg.Connection,
    tenant_id: uuid.UUID,
    asset_id: uuid.UUID,
    created_by: uuid.UUID | None,
    expires_at: datetime,
    status: str = "active",
    tokens: int = 2,
) -> uuid.UUID:
    link = _insert(
        conn,
        "share_links",
        {
            "tenant_id": tenant_id,
            "media_asset_id": asset_id,
            "created_by": created_by,
            "expires_at": expires_at,
            "status": status,
        },
    )
    for i in range(tokens):
        _insert(conn, "share_link_tokens", {"share_link_id": link, "token_hash": f"h{i}{link}"})
    return link


def suppression(
    conn: psycopg.Connection, email: str, reason: str = "bounce", age: timedelta = timedelta(days=1)
) -> None:
    conn.execute(
        "INSERT INTO portal.email_suppressions (email, reason, created_at, source) "
        "VALUES (%s, %s, now() - %s, 'test')",
        [email, reason, age],
    )


def _insert(conn: psycopg.Connection, table: str, values: dict[str, Any]) -> uuid.UUID:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in values)
    marks = sql.SQL(", ").join(sql.Placeholder() for _ in values)
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier("portal", table), columns, marks
    )
    row = conn.execute(statement, list(values.values())).fetchone()
    assert row
    return row[0]
