"""Report rows recorded before migration 0006 held a key relative to the store that wrote
them, not a URI. The migration cannot know that store, so the weekly asset, which has it,
rewrites each such column: only when the file at that key in its store still has the
recorded SHA-256 (proof it is the very report), with an audit entry per change. A key whose
file is not there (the store moved) stays as it is and is named. Once no such row is left
this reads one empty result a week."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from mm_orchestration.platform import audit
from mm_orchestration.platform.report_store import ReportStore, ReportStoreError, is_uri
from mm_orchestration.platform.sql_files import query

REPORT_JOB = "residency_report"


@dataclass
class LegacyRows:
    rewritten: int = 0
    unresolved: list[str] = field(default_factory=list)


def rewrite_legacy_uris(conn: psycopg.Connection, store: ReportStore, run_id: str) -> LegacyRows:
    """Turn relative keys left in `ops.residency_reports` into this store's URIs."""
    found = LegacyRows()
    for week, csv_ref, csv_sha, html_ref, html_sha in conn.execute(
        query(__package__, "legacy_rows")
    ).fetchall():
        for column, ref, sha in (
            ("storage_uri", csv_ref, csv_sha),
            ("html_uri", html_ref, html_sha),
        ):
            if ref is None or is_uri(ref):
                continue
            try:
                if not sha:
                    raise ReportStoreError(f"{ref!r} has no recorded SHA-256 to prove it")
                store.get(ref, sha)
            except ReportStoreError as exc:
                found.unresolved.append(f"{week} {column}: {exc}")
                continue
            uri = store.uri(ref)
            conn.execute(
                sql.SQL(
                    "UPDATE ops.residency_reports SET {col} = %s"
                    " WHERE week_start = %s AND {col} = %s"
                ).format(col=sql.Identifier(column)),
                [uri, week, ref],
            )
            audit.record(
                conn,
                "residency_report",
                "residency_report_uri_rewritten",
                REPORT_JOB,
                run_id,
                {"week_start": week.isoformat(), "column": column, "from": ref, "to": uri,
                 "sha256": sha},
                outcome="succeeded",
            )  # fmt: skip
            found.rewritten += 1
    return found
