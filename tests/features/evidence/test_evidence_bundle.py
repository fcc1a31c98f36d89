"""Signed evidence bundles: an exported bundle verifies offline with the public key; one
changed byte, a removed or changed file, or another key does not."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from datetime import UTC, date, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.types.json import Jsonb

from mm_orchestration.cli import main
from mm_orchestration.features.audit_trail import chain
from mm_orchestration.features.evidence import bundle as evidence
from mm_orchestration.features.evidence import check
from mm_orchestration.features.evidence.keys import (
    SIGNING_KEY_VAR,
    private_text,
    public_key,
    public_text,
)
from mm_orchestration.features.restore_drill import due
from mm_orchestration.platform import audit
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.settings import Settings

Q4 = evidence.Period.parse("2026-Q4")
KEY = Ed25519PrivateKey.generate()
NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path, monkeypatch) -> ReportStore:
    monkeypatch.setenv("MM_DATA_DIR", str(tmp_path / "data"))
    return ReportStore.from_settings(Settings.from_env())


@pytest.fixture
def quarter(conn, store) -> None:
    """A quarter's evidence: two weekly reports, a drill, some audit entries."""
    for week in (date(2026, 11, 16), date(2026, 11, 23)):
        csv_key, html_key = f"residency/{week}/r.csv", f"residency/{week}/r.html"
        csv_sha = store.put(csv_key, f"tenant,region\nacme {week},ap-southeast-2\n".encode())
        html_sha = store.put(html_key, f"<html>{week}</html>".encode())
        conn.execute(
            """INSERT INTO ops.residency_reports (week_start, generated_at, storage_uri, sha256,
                   row_count, compliant, html_uri, html_sha256)
               VALUES (%s, now(), %s, %s, 1, true, %s, %s)""",
            [week, store.uri(csv_key), csv_sha, store.uri(html_key), html_sha],
        )
    conn.execute(
        due.RECORD_DRILL,
        {"started": NOW, "status": "succeeded", "method": "local", "error": None,
         "checks": Jsonb({"rto_seconds": 4.25, "rpo_seconds": 61.0}), "every": due.DRILL_EVERY},
    )  # fmt: skip
    for person in ("olivia@mm.example", "=cmd|' /C calc'!A0"):
        audit.record(conn, person, "launch_run", "share-link-expiry", None, {}, outcome="allowed")


def exported(conn, store) -> evidence.Bundle:
    return evidence.export(conn, store, Q4, KEY, "olivia@mm.example")


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezipped(data: bytes, change) -> bytes:
    """The archive rebuilt with `change(files)` applied, its signature comment kept."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        comment = archive.comment
        files = {info.filename: archive.read(info) for info in archive.infolist()}
    change(files)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.comment = comment
    return out.getvalue()


def test_an_exported_bundle_holds_the_quarter_and_verifies(conn, store, quarter):
    made = exported(conn, store)
    checked = check.verify(made.data, KEY.public_key())
    assert checked.ok, checked.problems
    files = entries(made.data)
    assert set(files) == {
        "manifest.json", "manifest.sig", "README.txt", "SHA256SUMS", "audit-trail.csv",
        "audit-chain.json", "drills.csv", "drills.json", "restore-drill-due.json",
        "residency/reports.csv", "residency/residency-2026-11-16.csv",
        "residency/residency-2026-11-16.html", "residency/residency-2026-11-23.csv",
        "residency/residency-2026-11-23.html",
    }  # fmt: skip
    manifest = json.loads(files["manifest.json"])
    assert manifest["period"] == "2026-Q4" and manifest["public_key"] == public_text(
        KEY.public_key()
    )
    assert manifest["since"] == "2026-10-01T00:00:00+10:00"
    assert manifest["until"] == "2027-01-01T00:00:00+11:00"
    trail = files["audit-trail.csv"].decode()
    assert "olivia@mm.example" in trail and "\"'=cmd|' /C calc'!A0\"" in trail
    head = chain.head(conn, Q4.until)
    assert manifest["audit_chain"]["head_at_period_end"]["head"] == head.text()
    assert manifest["audit_chain"]["verified"] is True
    drills = files["drills.csv"].decode().splitlines()
    assert drills[0].startswith('"id","started_at","finished_at","status","method","rto_seconds"')
    assert "4.25" in drills[1] and "61.0" in drills[1]
    assert json.loads(files["restore-drill-due.json"])["state"] == "ok"
    assert files["residency/residency-2026-11-23.html"] == b"<html>2026-11-23</html>"
    assert manifest["residency_reports"] == {"weeks": 2, "compliant_weeks": 2}
    # The manifest's own signature checks with the raw key, as OpenSSL would.
    KEY.public_key().verify(files["manifest.sig"], files["manifest.json"])


def test_one_changed_byte_anywhere_fails(conn, store, quarter):
    data = exported(conn, store).data
    for position in (5, len(data) // 4, len(data) // 2, len(data) - 200, len(data) - 3):
        changed = bytearray(data)
        changed[position] ^= 0x01
        checked = check.verify(bytes(changed), KEY.public_key())
        assert not checked.ok, position
        assert "signature" in checked.problems[0] or "damaged" in checked.problems[0]
    # The signature's last base64 digit has four bits no byte uses (64 bytes end in `X==`):
    # set, they decode to the same signature, and must fail all the same.
    assert data.endswith(b"==")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    changed = bytearray(data)
    changed[-3] = alphabet[alphabet.index(data[-3]) + 1]
    assert base64.b64decode(bytes(changed)[-88:]) == base64.b64decode(data[-88:])
    assert not check.verify(bytes(changed), KEY.public_key()).ok


def test_a_changed_file_is_named(conn, store, quarter):
    data = exported(conn, store).data

    def edit(files):
        files["audit-trail.csv"] = files["audit-trail.csv"].replace(b"olivia", b"mallory")

    checked = check.verify(rezipped(data, edit), KEY.public_key())
    assert "audit-trail.csv does not match its SHA-256 in the manifest: it was changed" in (
        checked.problems
    )


def test_a_removed_or_added_file_is_named(conn, store, quarter):
    data = exported(conn, store).data
    checked = check.verify(rezipped(data, lambda files: files.pop("drills.csv")), KEY.public_key())
    assert not checked.ok and "signature does not verify" in checked.problems[0]
    assert "drills.csv is missing (the manifest lists it)" in checked.problems
    checked = check.verify(
        rezipped(data, lambda files: files.update({"extra.csv": b"x"})), KEY.public_key()
    )
    assert "extra.csv is not in the manifest: it was added" in checked.problems


def test_another_key_fails(conn, store, quarter):
    data = exported(conn, store).data
    checked = check.verify(data, Ed25519PrivateKey.generate().public_key())
    assert not checked.ok
    assert "signature does not verify with this public key" in checked.problems[0]
    assert "manifest.json's signature does not verify with this public key" in checked.problems


def test_a_report_no_longer_as_recorded_stops_the_export(conn, store, quarter):
    store.put("residency/2026-11-23/r.csv", b"tenant,region\nacme,us-east-1\n")
    with pytest.raises(evidence.EvidenceError, match="residency report of 2026-11-23 .CSV."):
        exported(conn, store)


def test_a_broken_chain_is_exported_only_when_asked_and_says_so(conn, store, quarter):
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE ops.audit_entries SET actor = 'mallory' WHERE id = 1")
    with pytest.raises(evidence.EvidenceError, match="BROKEN: edited"):
        exported(conn, store)
    made = evidence.export(conn, store, Q4, KEY, "o", allow_broken_chain=True)
    assert made.manifest["audit_chain"]["verified"] is False
    assert check.verify(made.data, KEY.public_key()).ok  # the bundle itself is intact


def test_periods():
    assert evidence.Period.parse("2026-q1").since.isoformat() == "2026-01-01T00:00:00+11:00"
    month = evidence.Period.parse("2026-12")
    assert (month.since.date(), month.until.date()) == (date(2026, 12, 1), date(2027, 1, 1))
    for bad in ("2026-Q5", "2026-13", "Q4", "2026-W48", "1999-Q1"):
        with pytest.raises(ValueError):
            evidence.Period.parse(bad)


def test_the_commands(conn, store, quarter, database_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv(SIGNING_KEY_VAR, private_text(KEY))
    out = tmp_path / "q4.zip"
    assert main(["evidence", "export", "--period", "2026-Q4", "--output", str(out),
                 "--actor", "olivia@mm.example"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "evidence for 2026-Q4" in printed and "audit chain verified" in printed
    public = public_text(KEY.public_key())
    assert main(["evidence", "verify", str(out), "--public-key", public]) == 0
    assert "verified: evidence for 2026-Q4" in capsys.readouterr().out
    # The key as a PEM file, as `openssl pkey -pubout` writes it.
    pem = tmp_path / "public.pem"
    pem.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert main(["evidence", "verify", str(out), "--public-key", str(pem)]) == 0
    other = public_text(Ed25519PrivateKey.generate().public_key())
    assert main(["evidence", "verify", str(out), "--public-key", other]) == 1
    assert "NOT verified" in capsys.readouterr().err
    # Kept for the console and audited, with who and the bundle's hash.
    (row,) = conn.execute(
        "SELECT period, generated_by, sha256, bytes FROM ops.evidence_bundles"
    ).fetchall()
    assert row[:2] == ("2026-Q4", "olivia@mm.example") and row[3] == out.stat().st_size
    (entry,) = conn.execute(
        "SELECT actor, target, outcome, details FROM ops.audit_log WHERE action = 'export_evidence'"
    ).fetchall()
    assert entry[:3] == ("olivia@mm.example", "evidence 2026-Q4", "succeeded")
    assert entry[3]["sha256"] == row[2]
    assert chain.verify(conn).ok


@pytest.mark.parametrize("value", ["", "hunter2-not-a-key", "A" * 40, "-----BEGIN x"])
def test_a_missing_or_malformed_signing_key_is_named_never_shown(
    database_url, tmp_path, monkeypatch, capsys, value
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv(SIGNING_KEY_VAR, value)
    assert main(["evidence", "export", "--period", "2026-Q4"]) == 2
    err = capsys.readouterr().err
    assert SIGNING_KEY_VAR in err
    if value:
        assert value not in err


def test_keygen_makes_a_pair_that_signs_and_checks(capsys, monkeypatch):
    assert main(["evidence", "keygen"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    monkeypatch.setenv(SIGNING_KEY_VAR, lines[SIGNING_KEY_VAR])
    assert main(["evidence", "public-key"]) == 0
    assert capsys.readouterr().out.strip() == lines["MM_EVIDENCE_PUBLIC_KEY"]
    public_key(lines["MM_EVIDENCE_PUBLIC_KEY"])


# -- what the reviewer found (issue 27) ----------------------------------------------------


def _signed_bundle(files: dict[str, bytes], manifest: dict) -> bytes:
    return evidence.write(files, manifest, KEY, NOW)


def _patched(data: bytes, name: str, patch) -> bytes:
    """The archive rebuilt with member `name` written by `patch(archive, info, content)`."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        comment = archive.comment
        files = {info.filename: archive.read(info) for info in archive.infolist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, content in files.items():
            if member == name:
                patch(archive, zipfile.ZipInfo(member), content)
            else:
                archive.writestr(member, content)
        archive.comment = comment
    return out.getvalue()


def _encrypted(archive, info, content):
    archive.writestr(info, content)
    archive.infolist()[-1].flag_bits |= 0x1  # "encrypted": zipfile asks for a password


def _unknown_method(archive, info, content):
    archive.writestr(info, content)
    archive.infolist()[-1].compress_type = 99  # the directory names a method nobody has


def _bomb(archive, info, content):
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, bytes(96 << 20))  # 96 MiB of zeros in ~100 kB


def test_a_hostile_archive_is_a_named_failure_never_a_crash(conn, store, quarter):
    import tracemalloc

    data = exported(conn, store).data
    for hostile, expected in (
        (b"not a zip at all", "no signature"),
        (data[: len(data) // 2], "cannot be read as a ZIP"),
        (_patched(data, "drills.csv", _encrypted), "drills.csv cannot be read"),
        (_patched(data, "drills.csv", _unknown_method), "drills.csv cannot be read"),
        (_patched(data, "manifest.json", _unknown_method), "manifest.json cannot be read"),
    ):
        checked = check.verify(hostile, KEY.public_key())
        assert not checked.ok
        assert any(expected in p for p in checked.problems), checked.problems
    bomb = _patched(data, "audit-trail.csv", _bomb)
    tracemalloc.start()
    try:
        checked = check.verify(bomb, KEY.public_key())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "audit-trail.csv does not match its SHA-256 in the manifest: it was changed" in (
        checked.problems
    )
    assert peak < 16 << 20, peak  # read no further than the signed manifest's size
    # A manifest of the wrong shape, signed: named, not a TypeError.
    for files in (5, [5], [{"path": "a", "sha256": "x", "bytes": "1"}], {"a": 1}):
        made = _signed_bundle({"a": b"1"}, {"format": evidence.FORMAT, "files": files})
        checked = check.verify(made, KEY.public_key())
        assert checked.problems == (
            "manifest.json's file list is malformed (each file a path, a SHA-256 and a size)",
        )


def test_after_the_archive_signature_fails_only_a_signed_manifest_is_read_on(conn, store, quarter):
    data = exported(conn, store).data
    other = Ed25519PrivateKey.generate()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = {i.filename: archive.read(i) for i in archive.infolist()}
    manifest = json.loads(files.pop("manifest.json"))
    files.pop("manifest.sig")
    forged = evidence.write(files, manifest, other, NOW)  # signed by another key
    checked = check.verify(forged, KEY.public_key())
    assert checked.manifest is None and len(checked.problems) == 2
    assert "manifest.json's signature does not verify" in checked.problems[1]


def test_sha256sums_says_what_the_signed_manifest_says(conn, store, quarter):
    made = exported(conn, store)
    files = entries(made.data)
    manifest = json.loads(files["manifest.json"])
    assert manifest["sha256sums_sha256"] == hashlib.sha256(files["SHA256SUMS"]).hexdigest()
    # Signed, each file as its manifest says, but SHA256SUMS (what `sha256sum -c` checks by
    # hand) lists another hash for a file: caught.
    sums = files["SHA256SUMS"].decode().splitlines()
    sums[0] = "0" * 64 + sums[0][64:]
    files["SHA256SUMS"] = ("\n".join(sums) + "\n").encode()
    for entry in manifest["files"]:
        if entry["path"] == "SHA256SUMS":
            entry["sha256"] = hashlib.sha256(files["SHA256SUMS"]).hexdigest()
            entry["bytes"] = len(files["SHA256SUMS"])
    manifest["sha256sums_sha256"] = hashlib.sha256(files["SHA256SUMS"]).hexdigest()
    del files["manifest.json"], files["manifest.sig"]
    checked = check.verify(_signed_bundle(files, manifest), KEY.public_key())
    assert checked.problems == ("SHA256SUMS does not list the manifest's files and hashes",)


def test_names_are_escaped_and_a_bad_output_is_one_line(
    conn, store, quarter, database_url, tmp_path, monkeypatch, capsys
):
    data = exported(conn, store).data
    sneaky = "\x1b[2J\x1b[31mfine.csv\u202e"
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(rezipped(data, lambda files: files.update({sneaky: b"x"})))
    public = public_text(KEY.public_key())
    assert main(["evidence", "verify", str(bundle), "--public-key", public]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err
    assert "\\x1b[2J\\x1b[31mfine.csv\\u202e is not in the manifest: it was added" in err
    bundle.write_bytes(b"PK\x03\x04 damaged")
    assert main(["evidence", "verify", str(bundle), "--public-key", public]) == 1
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv(SIGNING_KEY_VAR, private_text(KEY))
    bad = tmp_path / "no-such-dir" / "q4.zip"
    assert main(["evidence", "export", "--period", "2026-Q4", "--output", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot write" in err and str(bad) in err


def test_keygen_writes_the_public_pem_the_docs_name(tmp_path, capsys, monkeypatch):
    pem = tmp_path / "public.pem"
    assert main(["evidence", "keygen", "--public-pem", str(pem)]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    assert public_text(public_key(pem.read_text())) == lines["MM_EVIDENCE_PUBLIC_KEY"]
    monkeypatch.setenv(SIGNING_KEY_VAR, lines[SIGNING_KEY_VAR])
    assert main(["evidence", "public-key", "--pem"]) == 0
    assert capsys.readouterr().out.strip() == pem.read_text().strip()
