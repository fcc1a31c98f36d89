"""Benchmark: notification-digest for 10,000 people against the local SendGrid server.

Prints SendGrid API requests per 1,000 people (target: at most 1.1) and the whole
run's time (queue + deliver, through Dagster) as a ratio against the floor of the
digest query alone sent through psql on an identical clone (target: at most 2).
Run: `.venv/bin/python benchmarks/notification_digest.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

from mm_orchestration.db import connect
from mm_orchestration.jobs.notification_digest import (
    EMAIL_KIND,
    QUEUE_DIGESTS,
    notification_digest,
    reference_time,
)
from mm_orchestration.resources import JobSettings, Mailer, PortalDatabase

ROOT = Path(__file__).resolve().parent.parent

USERS, TENANTS = 10_000, 100
DAY = datetime.now(ZoneInfo("Australia/Sydney")).date()
REF = reference_time(DAY, "Australia/Sydney", 8)

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


def build(url: str) -> None:
    params = {"tenants": TENANTS, "per_tenant": USERS // TENANTS, "ref": REF}
    with connect(url, autocommit=True) as conn:
        for statement in BUILD:
            conn.execute(statement.encode(), params)


def _mail_requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/__stats") as response:
        return int(json.loads(response.read())["mail_requests"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
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
    with server() as pg:
        print(f"building {USERS:,} people with tasks and video updates...")
        source = source_database(pg, build)
        floor_sql = with_literals(
            pg,
            source,
            QUEUE_DIGESTS,
            {"ref": REF, "since": REF - timedelta(days=1), "kind": EMAIL_KIND},
        )
        runs, floors, requests = [], [], 0
        for _ in range(rounds):
            with clone(pg, source) as url:
                floors.append(psql_seconds(pg, url, floor_sql))
            with clone(pg, source) as url, DagsterInstance.ephemeral() as instance:
                db = PortalDatabase(url=url)
                before = _mail_requests(sendgrid_url)
                resources = {
                    "portal_db": db,
                    "mailer": Mailer(api_key="SG.bench", api_host=sendgrid_url),
                    "job_settings": JobSettings(digest_template_id="d-bench"),
                }
                config = {"ops": {"queue_daily_digests": {"config": {"date": DAY.isoformat()}}}}

                def run(resources=resources, config=config, instance=instance) -> None:
                    result = notification_digest.execute_in_process(
                        resources=resources, run_config=config, instance=instance
                    )
                    assert result.success

                runs.append(timed(run))
                requests = _mail_requests(sendgrid_url) - before
                db.close()
    recorder.communicate("")
    sent = USERS
    per_thousand = requests / (sent / 1000)
    ratio = median(runs) / median(floors)
    report(
        "notification-digest",
        {
            "people emailed per run": f"{sent:,}",
            "SendGrid requests per run": str(requests),
            "requests per 1,000 people": f"{per_thousand:.2f}  (target <= 1.1)",
            "run (Dagster, queue + send, median)": f"{median(runs):.2f} s",
            "floor (digest query via psql)": f"{median(floors):.2f} s",
        },
        ratio,
        "<= 2",
        ratio <= 2 and per_thousand <= 1.1,
    )


if __name__ == "__main__":
    main()
