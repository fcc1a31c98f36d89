"""An evidence bundle checked offline, with the public key alone: `mm-jobs evidence verify`.

The ZIP's comment must be an Ed25519 signature (in its one exact encoding) of every byte
before it. A damaged or hostile archive (not a ZIP, encrypted or unknown-compression
members, a malformed manifest, a zip bomb) is a failed check naming why, never an
exception: members are read a MiB at a time and never past the size the signed manifest
gives. When the archive's signature fails, the files are compared with the manifest only
if the manifest's own signature holds, to name which file was changed, removed or added.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import lzma
import re
import struct
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mm_orchestration.features.evidence.bundle import (
    FORMAT,
    MANIFEST,
    MANIFEST_SIG,
    SIGNATURE_LENGTH,
    SIGNATURE_PREFIX,
    SUMS,
)


@dataclass(frozen=True)
class Checked:
    """What `verify` found: nothing wrong, or each problem in words; the manifest read."""

    problems: tuple[str, ...]
    manifest: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return not self.problems


# What a damaged or hostile archive raises while read: each becomes a named problem.
_UNREADABLE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    OverflowError,
    struct.error,
    RuntimeError,  # an encrypted member
    NotImplementedError,  # a compression method zipfile does not have
)
CHUNK = 1 << 20  # a member is read and hashed a MiB at a time
MAX_SMALL = 16 << 20  # manifest.json, manifest.sig and SHA256SUMS are read whole, up to this
MAX_FILE = 4 << 30  # no file of a bundle is bigger (a zip bomb stops here)
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def shown(name: str, limit: int = 200) -> str:
    """A name from the archive as text safe to print: control and invisible characters
    escaped (`\\x1b`, `\\u202e`), so none moves a terminal's cursor or hides text."""
    out = "".join(
        c.encode("unicode_escape").decode("ascii")
        if c == "\\" or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
        else c
        for c in name
    )
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _signed(data: bytes, key: Ed25519PublicKey) -> str | None:
    """The problem with the archive's own signature, None when it verifies."""
    tail = len(SIGNATURE_PREFIX) + SIGNATURE_LENGTH
    if len(data) < tail or data[-tail:-SIGNATURE_LENGTH] != SIGNATURE_PREFIX:
        return (
            "the archive carries no signature at its end: it is not a signed evidence "
            "bundle, or it was cut short or rewritten"
        )
    try:
        signature = base64.b64decode(data[-SIGNATURE_LENGTH:], validate=True)
        if base64.b64encode(signature) != data[-SIGNATURE_LENGTH:]:
            raise ValueError("not the signature's one encoding")  # its spare bits changed
        key.verify(signature, data[:-SIGNATURE_LENGTH])
    except (InvalidSignature, binascii.Error, ValueError):
        return (
            "the archive's signature does not verify with this public key: a byte of "
            "it changed after it was signed (a file, a name, a date), or another key "
            "signed it"
        )
    return None


def verify(data: bytes, key: Ed25519PublicKey) -> Checked:
    """Whether `data` is a bundle signed by `key` and every file is as its manifest says;
    each problem in words (the first the archive's signature, then file by file). Never
    raises for what the archive holds: a damaged or hostile one is a problem named.

    When the archive's signature fails, only a manifest whose own signature verifies is
    read on (to name the file changed, removed or added), every file read no further than
    the size that signed manifest gives it; else the check stops there."""
    problems: list[str] = []
    outer = _signed(data, key)
    if outer is not None:
        problems.append(outer)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except _UNREADABLE as exc:
        problems.append(f"the archive cannot be read as a ZIP ({shown(str(exc))}): it is damaged")
        return Checked(tuple(problems), None)
    with archive:
        counts = Counter(info.filename for info in infos)
        members = {info.filename: info for info in infos}
        manifest, authentic = _manifest(archive, members, counts, key, problems)
        if manifest is None or (outer is not None and not authentic):
            return Checked(tuple(problems), None)
        _files(archive, members, counts, manifest, problems)
    return Checked(tuple(problems), manifest)


def _read(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, problems: list[str]
) -> tuple[str, int, bytes | None] | None:
    """A member's SHA-256 and size, read a chunk at a time and never past `limit` + 1
    bytes (its content too when `limit` is MAX_SMALL); None when it cannot be read."""
    digest, size, kept = hashlib.sha256(), 0, bytearray() if limit <= MAX_SMALL else None
    try:
        with archive.open(info) as member:
            while size <= limit:
                chunk = member.read(min(CHUNK, limit + 1 - size))
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                if kept is not None:
                    kept += chunk
    except _UNREADABLE as exc:
        problems.append(
            f"{shown(info.filename)} cannot be read from the archive ({shown(str(exc))}): "
            "it is damaged"
        )
        return None
    return digest.hexdigest(), size, None if kept is None else bytes(kept)


def _small(
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    counts: Counter[str],
    name: str,
    problems: list[str],
) -> bytes | None:
    """One of the bundle's own small files, whole; None (a problem named) when it is
    missing, there twice, too big or unreadable."""
    if name not in members:
        problems.append(f"{name} is missing: the bundle cannot be checked file by file")
        return None
    if counts[name] > 1:
        problems.append(f"{name} is in the archive more than once")
        return None
    read = _read(archive, members[name], MAX_SMALL, problems)
    if read is None:
        return None
    if read[1] > MAX_SMALL:
        problems.append(f"{name} is bigger than any bundle's ({MAX_SMALL:,} bytes at most)")
        return None
    return read[2]


def _entries(manifest: Any) -> list[dict[str, Any]] | None:
    """The manifest's file list when every entry is well formed, else None."""
    files = manifest.get("files")
    if not isinstance(files, list):
        return None
    for entry in files:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("sha256"), str)
            and _HEX64.fullmatch(entry["sha256"])
            and type(entry.get("bytes")) is int
            and 0 <= entry["bytes"] <= MAX_FILE
        ):
            return None
    return files


def _manifest(
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    counts: Counter[str],
    key: Ed25519PublicKey,
    problems: list[str],
) -> tuple[dict[str, Any] | None, bool]:
    """The manifest when it is one (else None), and whether its signature verifies."""
    body = _small(archive, members, counts, MANIFEST, problems)
    signature = _small(archive, members, counts, MANIFEST_SIG, problems) if body else None
    if body is None or signature is None:
        return None, False
    try:
        key.verify(signature, body)
        authentic = True
    except InvalidSignature:
        problems.append(f"{MANIFEST}'s signature does not verify with this public key")
        authentic = False
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):
        problems.append(f"{MANIFEST} is not JSON")
        return None, authentic
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        problems.append(f"{MANIFEST} is not an evidence manifest ({FORMAT})")
        return None, authentic
    if _entries(manifest) is None:
        problems.append(
            f"{MANIFEST}'s file list is malformed (each file a path, a SHA-256 and a size)"
        )
        return None, authentic
    return manifest, authentic


def _files(
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    counts: Counter[str],
    manifest: dict[str, Any],
    problems: list[str],
) -> None:
    listed = {entry["path"]: entry for entry in manifest["files"]}
    for name in sorted(n for n, count in counts.items() if count > 1):
        problems.append(f"{shown(name)} is in the archive more than once")
    for name, entry in listed.items():
        if name not in members:
            problems.append(f"{shown(name)} is missing (the manifest lists it)")
            continue
        read = _read(archive, members[name], entry["bytes"], problems)
        if read is None:
            continue
        digest, size, _ = read
        if digest != entry["sha256"]:
            problems.append(
                f"{shown(name)} does not match its SHA-256 in the manifest: it was changed"
            )
        elif size != entry["bytes"]:
            problems.append(f"{shown(name)} is not the size the manifest gives")
    for name in sorted(set(members) - set(listed) - {MANIFEST, MANIFEST_SIG}):
        problems.append(f"{shown(name)} is not in the manifest: it was added")
    _sums(archive, members, counts, listed, manifest, problems)


def _sums(
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    counts: Counter[str],
    listed: dict[str, dict[str, Any]],
    manifest: dict[str, Any],
    problems: list[str],
) -> None:
    """SHA256SUMS (what `sha256sum -c` checks by hand) says what the signed manifest says:
    the manifest lists it with its SHA-256 (also `sha256sums_sha256`), and its lines are
    the manifest's files and hashes, no more, no fewer."""
    entry = listed.get(SUMS)
    if entry is None or manifest.get("sha256sums_sha256") != entry["sha256"]:
        problems.append(f"{SUMS} is not tied to the signed manifest (it does not list its hash)")
        return
    body = _small(archive, members, counts, SUMS, [])
    if body is None or hashlib.sha256(body).hexdigest() != entry["sha256"]:
        return  # named above, file by file
    expected = sorted((e["sha256"], path) for path, e in listed.items() if path != SUMS)
    try:
        lines = sorted(tuple(line.split("  ", 1)) for line in body.decode("utf-8").splitlines())
    except UnicodeDecodeError:
        lines = []
    if lines != expected:
        problems.append(f"{SUMS} does not list the manifest's files and hashes")
