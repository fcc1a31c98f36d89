"""One period's evidence in one signed archive (its check offline is `check.py`).

`export` gathers, for a period (`2026-Q4`, or a month `2026-11`, in the business's
calendar), what an auditor asks for:

- `audit-trail.csv`: every audit entry of the period, as the console's download writes it;
- `audit-chain.json`: the hash chain verified when the bundle was made, and its head at
  the period's end (what `mm-jobs audit verify --expect-head` holds the chain to later);
- `drills.csv` / `drills.json`: the restore drills started in the period, with RTO, RPO,
  what was compared, and when the next was due; `restore-drill-due.json`: the rule's
  state at the period's end;
- `residency/`: each weekly residency report of the period (CSV and HTML, read back from
  the report store only if they still have their recorded SHA-256) and `reports.csv`;
- `manifest.json` (each file's SHA-256 and size, the period, who made it and when, the
  public key), `manifest.sig` (its Ed25519 signature), `SHA256SUMS` and `README.txt`.

The ZIP's comment, its very last bytes, is an Ed25519 signature of every byte before it,
so one changed byte anywhere (a file, its name, a date, the directory) fails `verify`;
the manifest then names which file was changed, removed or added. The signature covers
the archive with the key from MM_EVIDENCE_SIGNING_KEY; `verify` needs only the public key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mm_orchestration.features.audit_trail import chain
from mm_orchestration.features.audit_trail import query as trail
from mm_orchestration.features.evidence.keys import public_text
from mm_orchestration.features.restore_drill.due import drill_due
from mm_orchestration.platform.report_store import ReportStore, ReportStoreError, is_uri
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE

FORMAT = "mm-evidence-bundle/1"
MANIFEST = "manifest.json"
MANIFEST_SIG = "manifest.sig"
SUMS = "SHA256SUMS"
SIGNATURE_PREFIX = b"mm-evidence-signature/1:"
SIGNATURE_LENGTH = 88  # base64 of an Ed25519 signature's 64 bytes
MAX_AUDIT_ROWS = 2_000_000  # more in one period: export its months one by one


class EvidenceError(Exception):
    """A bundle that cannot be made as asked, and why (what to do is in the message)."""


@dataclass(frozen=True)
class Period:
    """A named stretch of the business's calendar: [since, until)."""

    name: str
    since: datetime
    until: datetime

    @classmethod
    def parse(cls, text: str, zone: str = BUSINESS_TIMEZONE) -> Period:
        """`2026-Q4` (a quarter) or `2026-11` (a month), local midnight to local midnight."""
        value = text.strip().upper()
        quarter = re.fullmatch(r"(\d{4})-Q([1-4])", value, re.ASCII)
        month = re.fullmatch(r"(\d{4})-(\d{2})", value, re.ASCII)
        if quarter:
            year, first = int(quarter[1]), 3 * int(quarter[2]) - 2
            start, months = date(year, first, 1), 3
        elif month and 1 <= int(month[2]) <= 12:
            start, months = date(int(month[1]), int(month[2]), 1), 1
        else:
            raise ValueError("a period is a quarter (2026-Q4) or a month (2026-11)")
        if not 2000 <= start.year <= 9000:
            raise ValueError("a period's year is between 2000 and 9000")
        index = start.month - 1 + months
        end = date(start.year + index // 12, index % 12 + 1, 1)
        tz = ZoneInfo(zone)
        return cls(value, datetime.combine(start, time(0), tz), datetime.combine(end, time(0), tz))


@dataclass(frozen=True)
class Bundle:
    """A signed archive and what its manifest says."""

    period: Period
    data: bytes
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def file_name(self) -> str:
        made = self.manifest["generated_at"].replace("-", "").replace(":", "")[:15]
        return f"evidence-{self.period.name}-{made}Z.zip"


# -- gathering --------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def _moment(value: Any) -> str | None:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else None


def _head(head: chain.Head | None) -> dict[str, Any] | None:
    if head is None:
        return None
    return {"head": head.text(), "links": head.links, "linked_at": _moment(head.linked_at)}


def _audit(
    conn: psycopg.Connection, period: Period, now: datetime, allow_broken_chain: bool
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The period's audit trail and the chain's state: verified first, in its own snapshot."""
    verdict = chain.verify(conn)
    if not verdict.ok and not allow_broken_chain:
        raise EvidenceError(
            f"{verdict.summary()}. A bundle says the trail is intact only when it is: look "
            "with `mm-jobs audit verify`, and export with --allow-broken-chain to record the "
            "break in the bundle instead"
        )
    found = trail.read(conn, trail.Filter(period.since, period.until), limit=MAX_AUDIT_ROWS)
    if found.truncated:
        raise EvidenceError(
            f"more than {MAX_AUDIT_ROWS:,} audit entries in {period.name}: export its months "
            "one by one (--period 2026-11)"
        )
    section = {
        "verified": verdict.ok,
        "verdict": verdict.summary(),
        "links_checked": verdict.checked,
        "problems": [p.message for p in verdict.problems],
        "head_at_period_end": _head(found.head),
        "head_when_exported": _head(verdict.head),
        "entries_in_period": len(found.frame),
    }
    document = {
        **section,
        "verified_at": now.isoformat(),
        "how_to_check_later": (
            "mm-jobs audit verify --expect-head HEAD (head_at_period_end): the chain "
            "still passes through it unless entries up to the period's end were changed"
        ),
    }
    files = {"audit-trail.csv": trail.as_csv(found.frame), "audit-chain.json": _json(document)}
    return files, section


_DRILLS = """
SELECT id, started_at, finished_at, status, method,
       checks->'rto_seconds' AS rto_seconds, checks->'rpo_seconds' AS rpo_seconds,
       next_due_at, error, checks
  FROM ops.backup_drills
 WHERE started_at >= %(since)s AND started_at < %(until)s
 ORDER BY started_at, id
"""


def _drills(
    conn: psycopg.Connection, period: Period, now: datetime
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The period's restore drills (RTO and RPO in seconds) and the rule's state at its end."""
    import pandas as pd  # imported here: pandas costs a light run 2 s

    from mm_orchestration.platform.spreadsheets import to_csv

    rows = conn.execute(_DRILLS, {"since": period.since, "until": period.until}).fetchall()
    columns = [
        "id", "started_at", "finished_at", "status", "method", "rto_seconds", "rpo_seconds",
        "next_due_at", "error",
    ]  # fmt: skip
    frame = pd.DataFrame([r[:9] for r in rows], columns=columns)
    for column in ("started_at", "finished_at", "next_due_at"):
        frame[column] = frame[column].map(_moment)
    records = [
        {**dict(zip(columns, r[:9], strict=True)), "checks": r[9]}
        | {c: _moment(r[i]) for i, c in ((1, "started_at"), (2, "finished_at"), (7, "next_due_at"))}
        for r in rows
    ]
    due = drill_due(conn, min(period.until, now))
    state = {
        "as_of": due.as_of.astimezone(UTC).isoformat(),
        "state": due.state,
        "last_successful_drill": _moment(due.last_success),
        "next_due": _moment(due.due_at),
        "rule": "a restore drill succeeds at least every 35 days (restore_drill/due.py)",
        "in_words": due.describe(),
    }
    files = {
        "drills.csv": to_csv(frame),
        "drills.json": _json(records),
        "restore-drill-due.json": _json(state),
    }
    return files, {"drills": len(rows), "succeeded": sum(r[3] == "succeeded" for r in rows),
                   "state_at_period_end": due.state}  # fmt: skip


_REPORTS = """
SELECT week_start, generated_at, compliant, row_count, storage_uri, sha256, html_uri,
       html_sha256, emailed_at
  FROM ops.residency_reports
 WHERE week_start >= %(since)s AND week_start < %(until)s
 ORDER BY week_start
"""


def _stored(store: ReportStore, ref: str, sha256: str | None, what: str) -> bytes:
    try:
        return store.get_uri(ref, sha256) if is_uri(ref) else store.get(ref, sha256)
    except ReportStoreError as exc:
        raise EvidenceError(
            f"{what}: {exc}. The bundle holds only reports that still have their recorded "
            "SHA-256: restore the file in the report store, or rerun the week's report"
        ) from None


def _residency(
    conn: psycopg.Connection, store: ReportStore, period: Period
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The period's weekly residency reports, each proven by its recorded SHA-256."""
    import pandas as pd

    from mm_orchestration.platform.spreadsheets import to_csv

    rows = conn.execute(
        _REPORTS, {"since": period.since.date(), "until": period.until.date()}
    ).fetchall()
    files: dict[str, bytes] = {}
    listed = []
    for week, generated, compliant, count, uri, sha, html_uri, html_sha, emailed in rows:
        csv_name = f"residency/residency-{week.isoformat()}.csv"
        files[csv_name] = _stored(store, uri, sha, f"the residency report of {week} (CSV)")
        html_name = None
        if html_uri:
            html_name = f"residency/residency-{week.isoformat()}.html"
            files[html_name] = _stored(
                store, html_uri, html_sha, f"the residency report of {week} (HTML)"
            )
        listed.append(
            {
                "week_start": week.isoformat(), "generated_at": _moment(generated),
                "compliant": compliant, "row_count": count, "csv_file": csv_name,
                "csv_sha256": sha, "html_file": html_name, "html_sha256": html_sha,
                "emailed_at": _moment(emailed), "stored_at": uri,
            }
        )  # fmt: skip
    files["residency/reports.csv"] = to_csv(
        pd.DataFrame(
            listed,
            columns=[
                "week_start",
                "generated_at",
                "compliant",
                "row_count",
                "csv_file",
                "csv_sha256",
                "html_file",
                "html_sha256",
                "emailed_at",
                "stored_at",
            ],
        )  # fmt: skip
    )
    compliant_weeks = sum(bool(r["compliant"]) for r in listed)
    return files, {"weeks": len(listed), "compliant_weeks": compliant_weeks}


README = """Evidence bundle {period} ({since} to {until}, {zone})
Made {generated_at} by {generated_by}.

What is here: manifest.json lists every file with its SHA-256 and size; manifest.sig is
its Ed25519 signature. audit-trail.csv is the period's audit trail, audit-chain.json the
audit log's hash chain as verified when this bundle was made (and its head at the
period's end). drills.csv/.json are the restore drills with RTO and RPO, and
restore-drill-due.json whether one was due or late. residency/ holds the weekly data
residency reports.

Check it (needs only the public key, {public_key}):
  mm-jobs evidence verify THIS.zip --public-key {public_key}
or by hand, once unzipped (OpenSSL 3; public.pem is the same public key as PEM, from
`mm-jobs evidence public-key --pem` or `keygen --public-pem public.pem`):
  openssl pkeyutl -verify -pubin -inkey public.pem -rawin -in manifest.json -sigfile manifest.sig
  sha256sum SHA256SUMS     # must print manifest.json's "sha256sums_sha256"
  sha256sum -c SHA256SUMS
The archive as a whole is signed too (its ZIP comment): `mm-jobs evidence verify` checks
that no byte of it changed.
"""


def export(
    conn: psycopg.Connection,
    store: ReportStore,
    period: Period,
    key: Ed25519PrivateKey,
    generated_by: str,
    now: datetime | None = None,
    allow_broken_chain: bool = False,
) -> Bundle:
    """The period's evidence, gathered and signed. `conn` outside a transaction (the chain
    is verified in its own snapshot). EvidenceError when it cannot be made as asked."""
    now = now or datetime.now(UTC)
    audit_files, audit_section = _audit(conn, period, now, allow_broken_chain)
    drill_files, drill_section = _drills(conn, period, now)
    residency_files, residency_section = _residency(conn, store, period)
    files = {**audit_files, **drill_files, **residency_files}
    public = public_text(key.public_key())
    fields = {
        "period": period.name, "since": period.since.isoformat(),
        "until": period.until.isoformat(), "zone": str(period.since.tzinfo),
        "generated_at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generated_by": generated_by, "public_key": public,
    }  # fmt: skip
    files["README.txt"] = README.format(**fields).encode()
    files[SUMS] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    ).encode()
    manifest = {
        "format": FORMAT,
        **fields,
        # What `sha256sum SHA256SUMS` prints: the by-hand check's list is the signed one.
        "sha256sums_sha256": hashlib.sha256(files[SUMS]).hexdigest(),
        "signature": {"algorithm": "Ed25519", "public_key": public},
        "audit_chain": audit_section,
        "restore_drills": drill_section,
        "residency_reports": residency_section,
        "files": [
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        ],
    }
    return Bundle(period, write(files, manifest, key, now), manifest)


def write(
    files: Mapping[str, bytes], manifest: dict[str, Any], key: Ed25519PrivateKey, when: datetime
) -> bytes:
    """The archive: the manifest and its signature first, then the files, then the
    signature of all of it in the ZIP comment."""
    body = _json(manifest)
    stamp = when.astimezone(UTC).timetuple()[:6]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        entries = [(MANIFEST, body), (MANIFEST_SIG, key.sign(body)), *sorted(files.items())]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
        archive.comment = SIGNATURE_PREFIX + b"=" * SIGNATURE_LENGTH  # its place, filled below
    signed = out.getvalue()[:-SIGNATURE_LENGTH]
    return signed + base64.b64encode(key.sign(signed))
