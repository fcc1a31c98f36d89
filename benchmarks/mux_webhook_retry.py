"""Benchmark: replaying 100,000 Mux dead letters against 100,000 videos.

Prints replay throughput (events per second, each event atomic with its own row)
as a ratio against the floor of the same updates done in one SQL statement through
psql on an identical clone (target: at least 0.2), and the DLQ depth sensor's
evaluation time with 100,000 rows in the table (target: under 50 ms).
Run: `.venv/bin/python benchmarks/mux_webhook_retry.py`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import clone, median, psql_seconds, report, server, source_database, timed

from mm_orchestration.features.mux_dlq.depth_sensor import queue_depth
from mm_orchestration.features.mux_dlq.replay import replay_due
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect

EVENTS = 100_000

BUILD = [
    "INSERT INTO portal.tenants (name, slug) VALUES ('Agency', 'agency')",
    """
    INSERT INTO portal.media_assets (tenant_id, title, mux_asset_id, mux_upload_id, status)
    SELECT (SELECT id FROM portal.tenants), 'Video ' || i, 'asset-' || i, 'up-' || i, 'preparing'
      FROM generate_series(1, %(n)s) i
    """,
    """
    INSERT INTO portal.mux_webhook_dlq (event_id, event_type, payload, attempts, status)
    SELECT 'evt-' || i, 'video.asset.ready', jsonb_build_object(
               'type', 'video.asset.ready', 'id', 'evt-' || i,
               'created_at', '2026-11-20T01:00:00Z',
               'object', jsonb_build_object('type', 'asset', 'id', 'asset-' || i),
               'data', jsonb_build_object('id', 'asset-' || i, 'status', 'ready',
                   'upload_id', 'up-' || i, 'duration', 60 + i %% 100,
                   'playback_ids', jsonb_build_array(jsonb_build_object('id', 'pb-' || i)))),
           1, 'pending'
      FROM generate_series(1, %(n)s) i
    """,
]

# The floor: the same effect, set-based, with no per-event atomicity or validation.
FLOOR = """
WITH events AS (
    SELECT id, payload FROM portal.mux_webhook_dlq WHERE status = 'pending'
), assets AS (
    UPDATE portal.media_assets a
       SET status = 'ready', status_changed_at = (e.payload->>'created_at')::timestamptz,
           updated_at = now(), duration_seconds = (e.payload->'data'->>'duration')::numeric,
           mux_playback_id = e.payload->'data'->'playback_ids'->0->>'id'
      FROM events e
     WHERE a.mux_asset_id = e.payload->'data'->>'id'
)
UPDATE portal.mux_webhook_dlq d
   SET status = 'replayed', replayed_at = now(), next_attempt_at = NULL, last_error = NULL
  FROM events e WHERE d.id = e.id
"""


def build(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        for statement in BUILD:
            conn.execute(statement.encode(), {"n": EVENTS} if "%(" in statement else None)


def main() -> None:
    with server() as pg:
        print(f"building {EVENTS:,} dead letters and videos...")
        source = source_database(pg, build)
        with clone(pg, source) as url:
            floor = psql_seconds(pg, url, FLOOR)
        with clone(pg, source) as url, connect(url) as conn:
            replayed = 0

            def work() -> None:
                nonlocal replayed
                replayed = replay_due(conn, MuxWebhooks(batch_size=500), "bench", "r@x").replayed

            seconds = timed(work)
        with clone(pg, source) as url:
            db = PortalDatabase(url=url)
            queue_depth(db)  # warm the pool and the cache, as the daemon's ticks are
            samples = []
            for _ in range(20):
                start = time.perf_counter()
                depth = queue_depth(db)
                samples.append(time.perf_counter() - start)
            db.close()
    ours, floor_rate = replayed / seconds, EVENTS / floor
    ratio = ours / floor_rate
    report(
        "mux-webhook-retry: replay throughput",
        {
            "events replayed": f"{replayed:,}",
            "replay (batches of 500)": f"{seconds:.2f} s = {ours:,.0f} events/s",
            "floor (one statement via psql)": f"{floor:.2f} s = {floor_rate:,.0f} events/s",
        },
        ratio,
        ">= 0.2",
        ratio >= 0.2,
    )
    sensor_ms = median(samples) * 1000
    print(
        f"  {'DLQ depth sensor query (median)':<34} {sensor_ms:.1f} ms with depth {depth:,}"
        f"  (target < 50 ms: {'met' if sensor_ms < 50 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
