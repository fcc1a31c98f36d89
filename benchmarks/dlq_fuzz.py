"""Fuzz at scale: many generated dead-letter batches through the real mux-webhook-retry job.

The same generator and checks as `tests/features/mux_dlq/test_dlq_fuzz.py` (good Mux events
mixed with hostile rows; every row settled alone, every video as its good events say), run for
many more examples on a throwaway embedded PostgreSQL, SendGrid stood in for by the tests'
recorder. Prints the examples, rows per kind and the time; exits non-zero on the first
property that fails (Hypothesis prints the smallest batch that shows it).
Run: `.venv/bin/python benchmarks/dlq_fuzz.py [examples]` (default 500).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the generator
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import server, source_database
from hypothesis import HealthCheck, given, settings

from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox.mailer import Mailer
from tests.features.mux_dlq.test_dlq_fuzz import Spec, batches, run_example
from tests.sendgrid_server import SendGridRecorder


def main() -> None:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    totals: Counter = Counter()
    with server() as pg:
        url = pg.url(source_database(pg, lambda _url: None))
        sendgrid = SendGridRecorder()
        db = PortalDatabase(url=url)
        resources = {
            "portal_db": db,
            "mailer": Mailer(
                api_key="SG.fuzz",
                api_host=sendgrid.url,
                mail_from="jobs@motionmavericks.example",
                backoff_seconds=0.01,
            ),
            "job_settings": JobSettings(digest_template_id="d-fuzz"),
        }
        started = time.perf_counter()
        try:
            with connect(url, autocommit=True) as conn:

                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                )
                @given(batch=batches(min_size=25, max_size=60))
                def example(batch: tuple[list[Spec], int]) -> None:
                    totals.update(run_example(conn, resources, batch))
                    if totals["examples"] % 50 == 0:
                        print(f"  {totals['examples']} examples, {totals['rows']:,} rows...")

                example()
        finally:
            seconds = time.perf_counter() - started
            db.close()
            sendgrid.close()
    print("\nmux-webhook-retry: dead-letter fuzz (real job, real PostgreSQL)")
    print(f"  {'examples':<34} {totals.pop('examples', 0):,}")
    print(f"  {'rows':<34} {totals.pop('rows', 0):,}")
    for kind, count in sorted(totals.items(), key=lambda kv: (kv[0] != "good", kv[0])):
        print(f"    {kind:<32} {count:,}")
    print(f"  {'time':<34} {seconds:.1f} s: every property held")


if __name__ == "__main__":
    main()
