"""Benchmark: notification-digest for 10,000 and 100,000 people against the SendGrid stand-in.

Prints, per size, SendGrid API requests per 1,000 people (target: at most 1.1) and the
whole run's time (queue + deliver, through Dagster: address checks, request planning by
SendGrid's limits, a durable 'sending' mark per request, the real SDK) as a ratio
against a floor that does the same work by hand in the same run, on an identical clone:
the digest statement (the people due, their content, the outbox rows) through psql, then
the same number of requests, each with the same
1,000 personalizations, built in SQL and posted with `requests` to the same stand-in
(target: at most 1.5).
Run: `.venv/bin/python benchmarks/notification_digest.py [--rounds N] [--sizes 10000,100000]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from _harness import (
    clone,
    median,
    psql_seconds,
    report,
    server,
    source_database,
    timed,
    with_literals,
)
from dagster import DagsterInstance

from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.features.digests.settle import EMAIL_KIND, plan
from mm_orchestration.features.digests.statements import SETTLE
from mm_orchestration.features.digests.zone_rules import write_zone_rules
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox.mailer import Mailer

ROOT = Path(__file__).resolve().parent.parent

TENANTS = 100
DAY = datetime.now(ZoneInfo("Australia/Sydney")).date()
# 08:00 in Perth: everyone's 08:00 (Sydney's, Brisbane's, Perth's) is within the grace.
REF = datetime.combine(DAY, clock_time(8), ZoneInfo("Australia/Perth"))
TEMPLATE = "d-bench"
FROM = "jobs@motionmavericks.com.au"

BUILD = [
    "INSERT INTO portal.tenants (name, slug) SELECT 'Agency ' || i, 'agency-' || i "
    "FROM generate_series(1, %(tenants)s) i",
    """
    INSERT INTO portal.users (tenant_id, email, display_name, timezone)
    SELECT t.id, 'person' || i || '@' || t.slug || '.example', 'Person ' || i,
           (ARRAY['Australia/Sydney','Australia/Perth','Australia/Brisbane'])[1 + i %% 3]
      FROM portal.tenants t, generate_series(1, %(per_tenant)s) i
    """,
    # Three tasks each: overdue, due tomorrow, due next week (not in the digest).
    """
    INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at)
    SELECT u.tenant_id, u.id, 'Task ' || k,
           %(ref)s::timestamptz + make_interval(hours => (ARRAY[-20, 20, 200])[k])
      FROM portal.users u, generate_series(1, 3) k
    """,
    # Five videos per agency became ready or errored since yesterday's digest.
    """
    INSERT INTO portal.media_assets (tenant_id, title, status, status_changed_at)
    SELECT t.id, 'Video ' || k, CASE WHEN k = 5 THEN 'errored' ELSE 'ready' END,
           %(ref)s::timestamptz - make_interval(hours => k * 3)
      FROM portal.tenants t, generate_series(1, 5) k
    """,
]

# The floor's request bodies, 1,000 personalizations each, built by the database itself:
# what a hand-written sender with no checks, no planning and no bookkeeping would post.
FLOOR_BODIES = """
SELECT '{"from": {"email": ' || to_jsonb(%(sender)s::text)::text
       || '}, "template_id": ' || to_jsonb(%(template)s::text)::text
       || ', "personalizations": [' || string_agg(part, ', ' ORDER BY id) || ']}'
  FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 1000 AS batch,
               jsonb_build_object(
                   'to', jsonb_build_array(jsonb_build_object('email', recipient)),
                   'dynamic_template_data', payload
                       || jsonb_build_object('counts', jsonb_build_object(
                              'due_soon', jsonb_array_length(payload->'due_soon'),
                              'overdue', jsonb_array_length(payload->'overdue'),
                              'asset_updates', jsonb_array_length(payload->'asset_updates'))),
                   'custom_args', jsonb_build_object('idempotency_key', idempotency_key)
               )::text AS part
          FROM ops.notification_outbox WHERE kind = %(kind)s) p
 GROUP BY batch ORDER BY batch
"""


def build(users: int):
    def fill(url: str) -> None:
        params = {"tenants": TENANTS, "per_tenant": users // TENANTS, "ref": REF}
        with connect(url, autocommit=True) as conn:
            for statement in BUILD:
                conn.execute(statement.encode(), params)

    return fill


def _mail_requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/__stats") as response:
        return int(json.loads(response.read())["mail_requests"])


def floor_seconds(pg, url: str, floor_sql: str, sendgrid_url: str) -> tuple[float, int]:
    """The digest query through psql, then every request posted by hand: (seconds, posts)."""
    query = psql_seconds(pg, url, floor_sql)
    start = time.perf_counter()
    with connect(url) as conn:
        bodies = [
            row[0]
            for row in conn.execute(
                FLOOR_BODIES, {"sender": FROM, "template": TEMPLATE, "kind": EMAIL_KIND}
            )
        ]
    for body in bodies:
        reply = requests.post(
            f"{sendgrid_url}/v3/mail/send",
            data=body.encode(),
            headers={"Authorization": "Bearer SG.bench", "Content-Type": "application/json"},
            timeout=(10, 30),
        )
        assert reply.status_code == 202, reply.text
    return query + time.perf_counter() - start, len(bodies)


def bench(pg, users: int, rounds: int, sendgrid_url: str) -> bool:
    print(f"\nbuilding {users:,} people with tasks and video updates...")
    source = source_database(pg, build(users), name=f"bench_src_{users}")
    with connect(pg.url(source)) as conn:
        # Our zone rules for the digests' local times, in the source every clone copies.
        params, _ = plan(conn, REF, "floor", timedelta(hours=6), "Australia/Sydney")
        write_zone_rules(conn, params["zone"], REF)
        conn.commit()
    params.pop("groups"), params.pop("groups_gone")
    floor_sql = with_literals(pg, source, SETTLE, params)
    runs, floors, requests_made, floor_posts = [], [], 0, 0
    for _ in range(rounds):
        with clone(pg, source) as url:
            seconds, floor_posts = floor_seconds(pg, url, floor_sql, sendgrid_url)
            floors.append(seconds)
        with clone(pg, source) as url, DagsterInstance.ephemeral() as instance:
            db = PortalDatabase(url=url)
            before = _mail_requests(sendgrid_url)
            resources = {
                "portal_db": db,
                "mailer": Mailer(api_key="SG.bench", api_host=sendgrid_url, mail_from=FROM),
                "job_settings": JobSettings(digest_template_id=TEMPLATE),
            }
            config = {"ops": {"queue_due_digests": {"config": {"now": REF.isoformat()}}}}

            def run(resources=resources, config=config, instance=instance) -> None:
                result = notification_digest.execute_in_process(
                    resources=resources, run_config=config, instance=instance
                )
                assert result.success

            runs.append(timed(run))
            requests_made = _mail_requests(sendgrid_url) - before
            with connect(url) as conn:
                sent = conn.execute(
                    "SELECT count(*) FROM ops.notification_outbox WHERE status = 'sent'"
                ).fetchone()
            assert sent == (users,), sent
            db.close()
    per_thousand = requests_made / (users / 1000)
    ratio = median(runs) / median(floors)
    report(
        f"notification-digest, {users:,} people",
        {
            "people emailed per run": f"{users:,}",
            "SendGrid requests per run": f"{requests_made} (floor: {floor_posts})",
            "requests per 1,000 people": f"{per_thousand:.2f}  (target <= 1.1)",
            "run (Dagster, queue + send, median)": f"{median(runs):.2f} s"
            f"  (rounds: {min(runs):.2f}-{max(runs):.2f} s)",
            "floor (psql query + posts, median)": f"{median(floors):.2f} s"
            f"  (rounds: {min(floors):.2f}-{max(floors):.2f} s)",
        },
        ratio,
        "<= 1.5",
        ratio <= 1.5 and per_thousand <= 1.1,
    )
    return ratio <= 1.5 and per_thousand <= 1.1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    # SendGrid's stand-in runs in a process of its own, as the real one would.
    recorder = subprocess.Popen(
        [sys.executable, "-m", "tests.sendgrid_server"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert recorder.stdout is not None
    sendgrid_url = recorder.stdout.readline().strip()
    try:
        with server() as pg:
            for users in (int(s) for s in args.sizes.split(",")):
                bench(pg, users, args.rounds, sendgrid_url)
    finally:
        recorder.communicate("")


if __name__ == "__main__":
    main()
