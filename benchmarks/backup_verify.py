"""Benchmark: the restore drill on a database of about 1 GB.

Prints the drill's time (snapshot fingerprint, pg_dump, pg_restore into a scratch
database, compare, drop) as a ratio against plain `pg_dump | pg_restore` of the same
database in the same run (target: at most 1.2).
Run: `.venv/bin/python benchmarks/backup_verify.py [--gigabytes 1.0]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import report, server, source_database, timed
from psycopg import sql

from mm_orchestration.features.restore_drill.job import run_local_drill
from mm_orchestration.features.restore_drill.resource import RestoreDrill
from mm_orchestration.platform.db import connect

ROWS_PER_GB = 6_500_000  # events of this shape take about 160 bytes each, indexes included


def build(rows: int):
    def fill(url: str) -> None:
        with connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO portal.tenants (name, slug) SELECT 'A' || i, 'a-' || i "
                "FROM generate_series(1, 200) i"
            )
            conn.execute(
                """INSERT INTO portal.events (tenant_id, event_type, occurred_at, properties)
                   SELECT t.ids[1 + g %% 200], 'asset.viewed',
                          now() - (g %% 1000000) * interval '1 second',
                          jsonb_build_object('n', g)
                     FROM generate_series(1, %(rows)s) g,
                          (SELECT array_agg(id) AS ids FROM portal.tenants) t""",
                {"rows": rows},
            )

    return fill


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=1.0)
    rows = int(parser.parse_args().gigabytes * ROWS_PER_GB)
    with server() as pg:
        print(f"building {rows:,} events...")
        source = source_database(pg, build(rows))
        url = pg.url(source)
        with connect(url) as conn:
            size = conn.execute(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).fetchone()[0]

        def plain() -> None:
            with connect(pg.url("postgres"), autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE plain_copy"))
            dump = subprocess.Popen(
                [pg.bin("pg_dump"), "--format=custom", f"--dbname={url}"], stdout=subprocess.PIPE
            )
            subprocess.run(
                [
                    pg.bin("pg_restore"),
                    "--no-owner",
                    "--no-privileges",
                    f"--dbname={pg.url('plain_copy')}",
                ],
                stdin=dump.stdout,
                check=True,
            )
            assert dump.wait() == 0
            with connect(pg.url("postgres"), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE plain_copy WITH (FORCE)"))

        floor = timed(plain)
        evidence: dict = {}
        drill = timed(lambda: evidence.update(run_local_drill(url, RestoreDrill())))
    ratio = drill / floor
    report(
        f"backup-verify: restore drill of a {size} database",
        {
            "drill (dump, restore, compare)": f"{drill:.1f} s "
            f"(RTO {evidence['rto_seconds']:.1f} s)",
            "floor (pg_dump | pg_restore)": f"{floor:.1f} s",
        },
        ratio,
        "<= 1.2",
        ratio <= 1.2,
    )


if __name__ == "__main__":
    main()
