"""Benchmark: tenant health for 5,000 tenants.

Prints the day's database work (replace the day's rows, then the summary for the
metadata and the Admin's email) as a ratio against the same statements through psql
on an identical clone (target: at most 1.5).
Run: `.venv/bin/python benchmarks/tenant_health.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import compare_rounds, report, server, source_database, with_literals

from mm_orchestration.features.tenant_health.asset import (
    CLEAR_DAY,
    SUMMARY,
    THRESHOLDS,
    WRITE_DAY,
    reference_time,
    summarise,
    write_day,
)
from mm_orchestration.platform.db import connect

TENANTS = 5_000
DAY = date(2026, 11, 20)
REF = reference_time(DAY)

BUILD = [
    "INSERT INTO portal.tenants (name, slug, status) SELECT 'Agency ' || i, 'agency-' || i, "
    "CASE WHEN i %% 50 = 0 THEN 'suspended' ELSE 'active' END FROM generate_series(1, %(n)s) i",
    # Ten milestones, forty tasks and twenty share links per tenant, spread around the day.
    """INSERT INTO portal.milestones (tenant_id, name, due_at, completed_at)
       SELECT t.id, 'M' || k,
              %(ref)s::timestamptz
                  + make_interval(hours => (k * 37 + length(t.slug) * 13) %% 400 - 100),
              CASE WHEN k %% 3 = 0 THEN %(ref)s::timestamptz - interval '1 day' END
         FROM portal.tenants t, generate_series(1, 10) k""",
    """INSERT INTO portal.tasks (tenant_id, title, due_at, completed_at)
       SELECT t.id, 'T' || k,
              %(ref)s::timestamptz
                  + make_interval(hours => (k * 29 + length(t.slug) * 7) %% 300 - 150),
              CASE WHEN k %% 4 = 0 THEN %(ref)s::timestamptz - interval '2 days' END
         FROM portal.tenants t, generate_series(1, 40) k""",
    """INSERT INTO portal.share_links (tenant_id, expires_at, status, view_count)
       SELECT t.id, %(ref)s::timestamptz + make_interval(days => k %% 10 - 3),
              CASE WHEN k %% 7 = 0 THEN 'revoked' ELSE 'active' END, k
         FROM portal.tenants t, generate_series(1, 20) k""",
]


def build(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        for statement in BUILD:
            conn.execute(statement.encode(), {"n": TENANTS, "ref": REF})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    params = {
        "day": DAY,
        "ref": REF,
        "risk": timedelta(hours=THRESHOLDS.milestone_risk_hours),
        "amber_tasks": THRESHOLDS.amber_overdue_tasks,
    }
    with server() as pg:
        print(f"building {TENANTS:,} tenants with milestones, tasks and share links...")
        source = source_database(pg, build)
        floor_sql = ";\n".join(
            with_literals(pg, source, q, params)
            for q in (
                CLEAR_DAY,
                WRITE_DAY,
                "SELECT status, count(*) FROM ops.tenant_health_daily "
                "WHERE day = %(day)s GROUP BY 1",
                SUMMARY,
            )
        )

        def work(conn):
            tenants = write_day(conn, DAY, REF)
            summarise(conn, DAY)
            return tenants

        job, floor, tenants = compare_rounds(pg, source, rounds, floor_sql, work)
    report(
        "tenant-health-check: one day",
        {
            "active tenants written": f"{tenants:,}",
            "job (median)": f"{job:.3f} s",
            "floor (psql, median)": f"{floor:.3f} s",
        },
        job / floor,
        "<= 1.5",
        job / floor <= 1.5,
    )


if __name__ == "__main__":
    main()
