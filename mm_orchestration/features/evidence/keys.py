"""The evidence bundles' Ed25519 keys: the private key signs (from MM_EVIDENCE_SIGNING_KEY,
read when a command needs it), the public key verifies anywhere, offline.

A key is given as base64 of its 32 raw bytes (one line: what `mm-jobs evidence keygen`
prints, and what fits an environment file) or as PEM (`openssl genpkey -algorithm ed25519`
and `openssl pkey -pubout`). A key that is missing or malformed is refused naming the
variable or option, never showing what it holds.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mm_orchestration.platform.settings import SettingsError
from mm_orchestration.platform.text import NOT_SHOWN

SIGNING_KEY_VAR = "MM_EVIDENCE_SIGNING_KEY"
PUBLIC_KEY_VAR = "MM_EVIDENCE_PUBLIC_KEY"
_FORMS = "base64 of the key's 32 raw bytes (`mm-jobs evidence keygen`) or a PEM Ed25519 key"


def _raw(text: str) -> bytes | None:
    """The 32 bytes a one-line base64 key holds, or None when it is not one."""
    compact = "".join(text.split())
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def private_key(text: str, name: str = SIGNING_KEY_VAR) -> Ed25519PrivateKey:
    """The signing key `text` holds; SettingsError naming `name` when it holds none."""
    raw = _raw(text)
    if raw is not None:
        return Ed25519PrivateKey.from_private_bytes(raw)
    try:
        key = serialization.load_pem_private_key(text.strip().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise SettingsError(
            f"{name} is not an Ed25519 private key ({_FORMS}, unencrypted); {NOT_SHOWN}"
        )
    return key


def public_key(text: str, name: str = PUBLIC_KEY_VAR) -> Ed25519PublicKey:
    """The verifying key `text` holds (or the file it names holds); SettingsError naming
    `name` when it holds none."""
    value = text.strip()
    if value and "\n" not in value and _raw(value) is None and Path(value).is_file():
        try:
            value = Path(value).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise SettingsError(f"{name}: the key file cannot be read as text") from None
    raw = _raw(value)
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(value.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise SettingsError(f"{name} is not an Ed25519 public key ({_FORMS}); {NOT_SHOWN}")
    return key


def signing_key(environ: Mapping[str, str] | None = None) -> Ed25519PrivateKey:
    """MM_EVIDENCE_SIGNING_KEY, read now (when a bundle is to be signed, never at import or
    load): SettingsError naming it when it is unset or malformed."""
    env = os.environ if environ is None else environ
    text = env.get(SIGNING_KEY_VAR, "")
    if not text.strip():
        raise SettingsError(
            f"{SIGNING_KEY_VAR} is not set: evidence bundles are signed with it "
            "(`mm-jobs evidence keygen` makes a key pair; docs/audit.md)"
        )
    return private_key(text)


def public_text(key: Ed25519PublicKey) -> str:
    """The public key as one line (base64 of its 32 bytes), as bundles and commands show it."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def private_text(key: Ed25519PrivateKey) -> str:
    """The private key as one line (base64 of its 32 bytes), for an environment file."""
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return base64.b64encode(raw).decode()


def public_pem(key: Ed25519PublicKey) -> str:
    """The public key as PEM (`public.pem`), what `openssl pkeyutl -verify -pubin` reads."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
