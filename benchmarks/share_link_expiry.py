"""Benchmark: share-link expiry's database work on 1,000,000 links, 200,000 of them due.

Floor: the very same statement sent straight through psql, on an identical clone of
the data, in the same run. Target: ratio at most 1.3, and far under the 60 s SLA.
Run with `make bench` or `.venv/bin/python benchmarks/share_link_expiry.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import compare_rounds, report, server, source_database

from mm_orchestration.features.share_links.job import EMAIL_KIND, EXPIRE_DUE_LINKS, expire_due_links
from mm_orchestration.platform.db import connect

LINKS, DUE_EVERY = 1_000_000, 5  # every fifth link is due: 200,000

BUILD = [
    "INSERT INTO portal.tenants (name, slug) SELECT 'Agency ' || i, 'agency-' || i "
    "FROM generate_series(1, 100) i",
    "INSERT INTO portal.users (tenant_id, email) SELECT t.id, 'u' || i || '@' || t.slug || "
    "'.example' FROM portal.tenants t, generate_series(1, 10) i",
    "INSERT INTO portal.media_assets (tenant_id, title) SELECT t.id, 'Video ' || i "
    "FROM portal.tenants t, generate_series(1, 100) i",
    """
    WITH a AS (SELECT id, tenant_id, row_number() OVER (ORDER BY id) AS rn
                 FROM portal.media_assets),
         u AS (SELECT id, tenant_id, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS rn
                 FROM portal.users)
    INSERT INTO portal.share_links (tenant_id, media_asset_id, created_by, expires_at)
    SELECT a.tenant_id, a.id, u.id,
           CASE WHEN g %% %(due_every)s = 0 THEN now() - interval '1 hour'
                ELSE now() + interval '30 days' END
      FROM generate_series(1, %(links)s) g
      JOIN a ON a.rn = 1 + (g %% 10000)
      JOIN u ON u.tenant_id = a.tenant_id AND u.rn = 1 + (g %% 10)
    """,
    "INSERT INTO portal.share_link_tokens (share_link_id, token_hash) "
    "SELECT l.id, md5(l.id::text || k) FROM portal.share_links l, generate_series(1, 2) k",
]


def build(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        for statement in BUILD:
            params = {"links": LINKS, "due_every": DUE_EVERY} if "%(" in statement else None
            conn.execute(statement.encode(), params)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    floor_sql = EXPIRE_DUE_LINKS.replace("%(kind)s", f"'{EMAIL_KIND}'")
    with server() as pg:
        print(f"building {LINKS:,} links ({LINKS // DUE_EVERY:,} due, two tokens each)...")
        source = source_database(pg, build)
        job, floor, expired = compare_rounds(
            pg, source, rounds, floor_sql, lambda conn: expire_due_links(conn).links_expired
        )
    ratio = job / floor
    report(
        "share-link-expiry: database work",
        {
            "links expired per run": f"{expired:,}",
            "job (psycopg, median)": f"{job:.2f} s",
            "floor (psql, median)": f"{floor:.2f} s",
            "SLA": "60 s",
        },
        ratio,
        "<= 1.3",
        ratio <= 1.3 and job < 60,
    )


if __name__ == "__main__":
    main()
