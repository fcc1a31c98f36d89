"""Benchmark: rolling up one hour that holds 1,000,000 events.

Prints the partition's database work as a ratio against the same
`INSERT ... SELECT ... GROUP BY` through psql on an identical clone (target: at most
1.3), then the same hour again after ten times more history is added to the table
(target: the partition's time grows by at most 20%).
Run: `.venv/bin/python benchmarks/analytics_rollup.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import compare_rounds, report, server, source_database, with_literals

from mm_orchestration.features.analytics.asset import ROLL_UP_HOUR, roll_up_hour
from mm_orchestration.platform.db import connect

HOUR = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
IN_HOUR = 1_000_000
HISTORY = 2_000_000  # the week before; then ten times as much history in total

EVENTS = """
INSERT INTO portal.events (tenant_id, user_id, event_type, occurred_at)
SELECT t.ids[1 + g %% 100], CASE WHEN g %% 7 = 0 THEN NULL ELSE u.ids[1 + g %% 2000] END,
       (ARRAY['asset.viewed','comment.added','share_link.opened','upload.completed',
              'approval.granted','task.completed'])[1 + g %% 6],
       %(start)s::timestamptz + (g %% %(span)s) * interval '1 second'
  FROM generate_series(1, %(n)s) g,
       (SELECT array_agg(id) AS ids FROM portal.tenants) t,
       (SELECT array_agg(id) AS ids FROM portal.users) u
"""


def build(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO portal.tenants (name, slug) SELECT 'A' || i, 'a-' || i "
            "FROM generate_series(1, 100) i"
        )
        conn.execute(
            "INSERT INTO portal.users (tenant_id, email) SELECT id, 'u' || i || "
            "'@x.example' FROM portal.tenants, generate_series(1, 20) i"
        )
        conn.execute(EVENTS, {"start": HOUR, "span": 3600, "n": IN_HOUR})
        conn.execute(EVENTS, {"start": HOUR - timedelta(days=7), "span": 6 * 86400, "n": HISTORY})


def add_history(url: str, rows: int) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute(EVENTS, {"start": HOUR - timedelta(days=400), "span": 390 * 86400, "n": rows})
        conn.execute("VACUUM ANALYZE portal.events")


def measure(pg, source, rounds):
    params = {"start": HOUR, "end": HOUR + timedelta(hours=1)}
    floor_sql = with_literals(pg, source, ROLL_UP_HOUR, params)
    job, floor, _ = compare_rounds(
        pg, source, rounds, floor_sql, lambda conn: roll_up_hour(conn, HOUR)
    )
    return job, floor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    with server() as pg:
        print(f"building {IN_HOUR:,} events in one hour, plus {HISTORY:,} of history...")
        source = source_database(pg, build)
        job, floor = measure(pg, source, rounds)
        print(f"adding {9 * HISTORY:,} more events of history (ten times as much)...")
        add_history(pg.url(source), 9 * HISTORY)
        job_big, floor_big = measure(pg, source, rounds)
    report(
        "analytics-rollup: one hour of 1,000,000 events",
        {"partition (median)": f"{job:.2f} s", "floor (psql, median)": f"{floor:.2f} s"},
        job / floor,
        "<= 1.3",
        job / floor <= 1.3,
    )
    growth = job_big / job - 1
    print(
        f"  {'with 10x more history':<34} {job_big:.2f} s (floor {floor_big:.2f} s): "
        f"{growth:+.0%}  (target <= +20%: {'met' if growth <= 0.2 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
