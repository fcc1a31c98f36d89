"""Where exported bundles are kept for the compliance team's download: the report store
(`evidence/<period>/<file>`), each recorded in `ops.evidence_bundles` with its SHA-256,
and each export audited.

The console serves the newest bundle of a period only while its bytes still have the
recorded SHA-256; it never signs anything itself (the signing key stays with whoever
runs `mm-jobs evidence export`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from mm_orchestration.features.evidence.bundle import Bundle
from mm_orchestration.platform import audit
from mm_orchestration.platform.report_store import (
    ReportStore,
    ReportStoreError,
    ReportStoreUnavailable,
)

_NEWEST = """
SELECT storage_uri, sha256, generated_at FROM ops.evidence_bundles
 WHERE period = %s ORDER BY generated_at DESC, id DESC LIMIT 1
"""


def keep(
    conn: psycopg.Connection, store: ReportStore, bundle: Bundle, actor: str, os_user: str
) -> str:
    """Store `bundle`, record it and audit the export, in one transaction; its URI."""
    key = f"evidence/{bundle.period.name}/{bundle.file_name}"
    digest = store.put(key, bundle.data)
    uri = store.uri(key)
    head = (bundle.manifest["audit_chain"]["head_at_period_end"] or {}).get("head")
    with conn.transaction():
        conn.execute(
            """INSERT INTO ops.evidence_bundles (period, period_start, period_end, generated_at,
                   generated_by, storage_uri, sha256, bytes, chain_head, public_key)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            [
                bundle.period.name, bundle.period.since, bundle.period.until,
                bundle.manifest["generated_at"], actor, uri, digest, len(bundle.data),
                head, bundle.manifest["public_key"],
            ],
        )  # fmt: skip
        audit.record(
            conn,
            actor,
            "export_evidence",
            None,
            None,
            {
                "source": "cli",
                "os_user": os_user,
                "period": bundle.period.name,
                "object_key": key,
                "sha256": digest,
                "bytes": len(bundle.data),
                "public_key": bundle.manifest["public_key"],
                "chain_head_at_period_end": head,
                "chain_verified": bundle.manifest["audit_chain"]["verified"],
            },
            target=f"evidence {bundle.period.name}",
            outcome="succeeded",
        )
    return uri


@dataclass(frozen=True)
class Kept:
    """A stored bundle as the console serves it (status 200), or why not."""

    status: int
    body: bytes
    name: str = ""


def newest(conn: psycopg.Connection, store: ReportStore, period: str) -> Kept:
    """The newest bundle exported for `period`, proven by its recorded SHA-256."""
    row = conn.execute(_NEWEST, [period]).fetchone()
    if row is None:
        return Kept(
            404,
            f"no evidence bundle was exported for {period}: run `mm-jobs evidence export "
            f"--period {period}`".encode(),
        )
    uri, digest, _ = row
    try:
        data = store.get_uri(uri, digest)
    except ReportStoreUnavailable as exc:  # the store's fault, not the bundle's: try later
        return Kept(503, str(exc).encode())
    except ReportStoreError as exc:
        return Kept(409 if "SHA-256" in str(exc) else 404, str(exc).encode())
    return Kept(200, data, uri.rsplit("/", 1)[-1])
