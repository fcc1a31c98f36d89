"""Versioned SQL migrations: `ops` always, the `portal` DDL only for development and tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg

# One lock id for every migrator, so two `mm-jobs migrate` at once apply each file once.
_MIGRATION_LOCK = 7_201_911_001

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.schema_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    name: str  # e.g. "ops/0001_ops_schema"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available(with_portal_schema: bool) -> list[Migration]:
    """Portal DDL first (ops tables may refer to it later), each folder in version order."""
    folders = (["portal"] if with_portal_schema else []) + ["ops"]
    found: list[Migration] = []
    root = resources.files("mm_orchestration.platform") / "migrations"
    for folder in folders:
        files = sorted(
            (f for f in (root / folder).iterdir() if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        found += [Migration(f"{folder}/{f.name[:-4]}", f.read_text()) for f in files]
    return found


class MigrationChanged(RuntimeError):
    """An applied migration's file was edited afterwards; add a new migration instead."""


def migrate(conn: psycopg.Connection, with_portal_schema: bool = False) -> list[str]:
    """Apply what is not applied yet, each file in its own transaction. Returns the names."""
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", [_MIGRATION_LOCK])
    try:
        conn.execute(_BOOTSTRAP)
        applied: dict[str, str] = dict(
            conn.execute("SELECT name, checksum FROM ops.schema_migrations").fetchall()
        )
        done: list[str] = []
        for migration in available(with_portal_schema):
            if migration.name in applied:
                if applied[migration.name] != migration.checksum:
                    raise MigrationChanged(
                        f"{migration.name} was edited after it was applied; "
                        "write a new migration instead"
                    )
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO ops.schema_migrations (name, checksum) VALUES (%s, %s)",
                    [migration.name, migration.checksum],
                )
            done.append(migration.name)
        return done
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [_MIGRATION_LOCK])


def current_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT max(name) FROM ops.schema_migrations WHERE name LIKE 'ops/%'"
    ).fetchone()
    return row[0] if row else None
