"""Benchmark: the weekly residency report for 5,000 tenants and 1,000,000 videos.

Prints the report's time (read the regions, build the rows, write CSV and HTML,
store both) as a ratio against the floor of its query through psql on the same data
(target: at most 2), and the peak memory the report's Python work allocates
(target: under 300 MB: the rows are aggregated in SQL and streamed).
Run: `.venv/bin/python benchmarks/residency_report.py`.
"""

from __future__ import annotations

import sys
import tempfile
import tracemalloc
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import psql_seconds, report, server, source_database, timed, with_literals

from mm_orchestration.features.residency.report import build_frame, render, report_params
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.sql_files import query

TENANTS, ASSETS = 5_000, 1_000_000

BUILD = [
    """INSERT INTO portal.tenants (name, slug, data_region)
       SELECT 'Agency ' || i, 'agency-' || i,
              CASE WHEN i %% 100 = 0 THEN 'us-west-2' ELSE 'ap-southeast-2' END
         FROM generate_series(1, %(tenants)s) i""",
    """INSERT INTO portal.media_assets (tenant_id, title, status, storage_region)
       SELECT t.ids[1 + g %% %(tenants)s], 'Video ' || g,
              CASE WHEN g %% 50 = 0 THEN 'deleted' ELSE 'ready' END,
              CASE WHEN g %% 997 = 0 THEN 'us-east-1' ELSE 'ap-southeast-2' END
         FROM generate_series(1, %(assets)s) g,
              (SELECT array_agg(id) AS ids FROM portal.tenants) t""",
]


def build(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        for statement in BUILD:
            conn.execute(statement.encode(), {"tenants": TENANTS, "assets": ASSETS})


def main() -> None:
    with server() as pg, tempfile.TemporaryDirectory() as tmp:
        print(f"building {TENANTS:,} tenants and {ASSETS:,} videos...")
        source = source_database(pg, build)
        url = pg.url(source)
        floor_sql = with_literals(
            pg, source, query("mm_orchestration.features.residency", "report_rows"), report_params()
        )
        floor = min(psql_seconds(pg, url, floor_sql) for _ in range(3))
        store = ReportStore(root=tmp)
        counts: dict[str, int] = {}

        def work() -> None:
            with connect(url) as conn:
                frame = build_frame(conn, datetime.now(UTC))
            csv, html, exceptions = render(frame, date(2026, 11, 16))
            store.put("r.csv", csv)
            store.put("r.html", html)
            counts.update(rows=len(frame), exceptions=len(exceptions))

        job = min(timed(work) for _ in range(3))
        tracemalloc.start()  # a separate pass: tracing slows Python down several times
        work()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    ratio = job / floor
    peak_mb = peak / 2**20
    report(
        "residency-report: 5,000 tenants, 1,000,000 videos",
        {
            "report rows": f"{counts['rows']:,} ({counts['exceptions']} tenants with exceptions)",
            "report (best of 3)": f"{job:.2f} s",
            "floor (its query via psql)": f"{floor:.2f} s",
            "peak Python allocation": f"{peak_mb:.0f} MB (target < 300 MB)",
        },
        ratio,
        "<= 2",
        ratio <= 2 and peak_mb < 300,
    )


if __name__ == "__main__":
    main()
