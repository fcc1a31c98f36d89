"""Benchmark: invite-cleanup and suppression-cleanup on 1,000,000 rows each.

Floors: the raw statements sent straight through psql on identical clones, in the
same run. Target: each job's database work at most 1.3 times its floor.
Run: `.venv/bin/python benchmarks/cleanups.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import compare_rounds, report, server, source_database

from mm_orchestration.features.invitations.job import expire_stale_invitations
from mm_orchestration.features.suppressions.job import delete_old_bounces
from mm_orchestration.platform.db import connect

ROWS = 1_000_000

BUILD = [
    "INSERT INTO portal.tenants (name, slug) SELECT 'Agency ' || i, 'agency-' || i "
    "FROM generate_series(1, 100) i",
    # A fifth of the invitations are pending and older than 72 hours.
    """
    INSERT INTO portal.invitations (tenant_id, email, role, status, created_at)
    SELECT (SELECT id FROM portal.tenants ORDER BY id LIMIT 1 OFFSET g %% 100),
           'guest' || g || '@client.example', 'viewer',
           CASE WHEN g %% 10 = 0 THEN 'accepted' ELSE 'pending' END,
           now() - make_interval(hours => CASE WHEN g %% 5 = 1 THEN 100 ELSE 24 END)
      FROM generate_series(1, %(rows)s) g
    """,
    # A quarter are bounces older than 30 days; the rest younger or another reason.
    """
    INSERT INTO portal.email_suppressions (email, reason, created_at, source)
    SELECT 'addr' || g || '@x.example',
           (ARRAY['bounce','bounce','unsubscribe','spam_report'])[1 + g %% 4],
           now() - make_interval(days => CASE WHEN g %% 2 = 0 THEN 40 ELSE 10 END), 'bench'
      FROM generate_series(1, %(rows)s) g
    """,
]

INVITE_FLOOR = (
    "UPDATE portal.invitations SET status = 'expired', expired_at = now() "
    "WHERE status = 'pending' AND created_at < now() - interval '72 hours'"
)
SUPPRESSION_FLOOR = (
    "DELETE FROM portal.email_suppressions "
    "WHERE reason = 'bounce' AND created_at < now() - interval '30 days'"
)


def build(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        for statement in BUILD:
            conn.execute(statement.encode(), {"rows": ROWS} if "%(" in statement else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    with server() as pg:
        print(f"building {ROWS:,} invitations and {ROWS:,} suppressions...")
        source = source_database(pg, build)
        job, floor, n = compare_rounds(pg, source, rounds, INVITE_FLOOR, expire_stale_invitations)
        report(
            "invite-cleanup: database work",
            {
                "invitations expired": f"{n:,}",
                "job (median)": f"{job:.3f} s",
                "floor (psql, median)": f"{floor:.3f} s",
            },
            job / floor,
            "<= 1.3",
            job / floor <= 1.3,
        )
        job, floor, n = compare_rounds(
            pg,
            source,
            rounds,
            SUPPRESSION_FLOOR,
            lambda conn: delete_old_bounces(conn, "bench", "bench").rows,
        )
        report(
            "notification-suppression-cleanup: database work (with hashes for the audit)",
            {
                "bounces deleted": f"{n:,}",
                "job (median)": f"{job:.3f} s",
                "floor (psql, median)": f"{floor:.3f} s",
            },
            job / floor,
            "<= 1.3",
            job / floor <= 1.3,
        )


if __name__ == "__main__":
    main()
