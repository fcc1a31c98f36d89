"""Shared benchmark plumbing: a throwaway embedded PostgreSQL, clones, psql timing.

Every benchmark compares our code against a floor measured in the same run on the
same server and data, so the ratio means the same on a laptop or a CI box.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from mm_orchestration.local.embedded_pg import EmbeddedPostgres
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.migrate import migrate


@contextmanager
def server() -> Iterator[EmbeddedPostgres]:
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "cluster").start()  # default, durable settings
        try:
            yield pg
        finally:
            pg.stop()


def source_database(
    pg: EmbeddedPostgres, build: Callable[[str], None], name: str = "bench_src"
) -> str:
    """A migrated database with the portal schema, filled by `build(url)`, then analysed."""
    with connect(pg.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with connect(pg.url(name), autocommit=True) as conn:
        migrate(conn, with_portal_schema=True)
    build(pg.url(name))
    with connect(pg.url(name), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return name


@contextmanager
def clone(pg: EmbeddedPostgres, template: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with connect(pg.url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield pg.url(name)
    finally:
        with connect(pg.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def psql_seconds(pg: EmbeddedPostgres, url: str, statement: str) -> float:
    """Server-side time of one statement sent through psql (from `\\timing`)."""
    script = f"\\timing on\n{statement.strip().rstrip(';')};\n"
    out = subprocess.run(
        [pg.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", url],
        input=script,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times = [float(m) for m in re.findall(r"Time: ([\d.]+) ms", out)]
    return sum(times) / 1000


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(title: str, figures: dict[str, str], ratio: float, target: str, ok: bool) -> None:
    print(f"\n{title}")
    for k, v in figures.items():
        print(f"  {k:<34} {v}")
    print(f"  {'ratio':<34} {ratio:.2f}  (target {target}: {'met' if ok else 'MISSED'})")


def with_literals(pg: EmbeddedPostgres, database: str, statement: str, params: Any) -> str:
    """The statement with its parameters inlined as SQL literals, for psql."""
    with connect(pg.url(database)) as conn, psycopg.ClientCursor(conn) as cur:
        return cur.mogrify(statement, params)


def compare_rounds(
    pg: EmbeddedPostgres,
    source: str,
    rounds: int,
    floor_sql: str,
    work: Callable[[psycopg.Connection], Any],
) -> tuple[float, float, Any]:
    """Median seconds of `work(conn)` (committed) and of `floor_sql` through psql, each on
    its own fresh clone of `source`; plus what the last `work` returned."""
    ours, floors, result = [], [], None
    for _ in range(rounds):
        with clone(pg, source) as url:
            floors.append(psql_seconds(pg, url, floor_sql))
        with clone(pg, source) as url, connect(url) as conn:
            start = time.perf_counter()
            result = work(conn)
            conn.commit()
            ours.append(time.perf_counter() - start)
    return median(ours), median(floors), result
