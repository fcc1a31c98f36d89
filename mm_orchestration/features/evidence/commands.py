"""`mm-jobs evidence`: signed evidence bundles for auditors.

- `export --period 2026-Q4`: gather the period's evidence, sign it with
  MM_EVIDENCE_SIGNING_KEY, write it (`--output`), keep a copy in the report store for the
  console's download, and audit the export;
- `verify FILE --public-key KEY`: check a bundle offline (no database, no settings);
- `keygen`: a new key pair; `public-key`: the public half of MM_EVIDENCE_SIGNING_KEY.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mm_orchestration.cli.arguments import actor, connection, local_settings, os_user, refuse

EXIT_BAD_BUNDLE = 1


def _period(value: str) -> Any:
    """`--period`: a quarter (2026-Q4) or a month (2026-11)."""
    from mm_orchestration.features.evidence.bundle import Period

    try:
        return Period.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    """Add `mm-jobs evidence ...`."""
    evidence = sub.add_parser(
        "evidence", help="signed evidence bundles for auditors: export, verify, keys"
    )
    esub = evidence.add_subparsers(required=True, metavar="ACTION")
    p = esub.add_parser(
        "export",
        help="one signed archive of a period's residency reports, restore drills and audit "
        "trail (MM_EVIDENCE_SIGNING_KEY signs it)",
    )
    p.add_argument("--period", type=_period, required=True, help="2026-Q4 or 2026-11")
    p.add_argument("--output", type=Path, help="where to write it; default: ./<its name>.zip")
    p.add_argument("--actor", type=actor, help="who is exporting; default: you")
    p.add_argument(
        "--allow-broken-chain",
        action="store_true",
        help="export even when the audit chain does not verify (the bundle says so)",
    )
    p.set_defaults(func=cmd_evidence_export)
    p = esub.add_parser("verify", help="check a bundle offline with the public key (exit 1: bad)")
    p.add_argument("file", type=Path)
    p.add_argument(
        "--public-key",
        help="the public key (base64 or PEM) or a file holding it; default: MM_EVIDENCE_PUBLIC_KEY",
    )
    p.set_defaults(func=cmd_evidence_verify)
    p = esub.add_parser("keygen", help="print a new signing key and its public key")
    p.add_argument(
        "--public-pem",
        type=Path,
        metavar="FILE",
        help="also write the public key as PEM there (public.pem, for openssl)",
    )
    p.set_defaults(func=cmd_evidence_keygen)
    p = esub.add_parser("public-key", help="the public key of MM_EVIDENCE_SIGNING_KEY")
    p.add_argument("--pem", action="store_true", help="as PEM (public.pem, for openssl)")
    p.set_defaults(func=cmd_evidence_public_key)


def cmd_evidence_export(args: argparse.Namespace) -> int:
    from mm_orchestration.features.evidence.bundle import EvidenceError, export
    from mm_orchestration.features.evidence.keys import signing_key
    from mm_orchestration.features.evidence.store import keep
    from mm_orchestration.platform.report_store import ReportStore

    key = signing_key()  # first: a missing or bad key stops before any work, named
    settings = local_settings()
    store = ReportStore.from_settings(settings)
    who = args.actor or os_user()
    with connection() as conn:
        try:
            bundle = export(
                conn, store, args.period, key, who, allow_broken_chain=args.allow_broken_chain
            )
        except EvidenceError as exc:
            return refuse(f"evidence for {args.period.name} not exported: {exc}", code=1)
        output = args.output or Path(bundle.file_name)
        try:
            output.write_bytes(bundle.data)
        except OSError as exc:
            return refuse(
                f"evidence for {args.period.name} not exported: cannot write "
                f"{output}: {exc.strerror or exc}"
            )
        uri = keep(conn, store, bundle, who, os_user())
    chain = bundle.manifest["audit_chain"]
    head = chain["head_at_period_end"]
    print(f"{output}: evidence for {args.period.name}, {len(bundle.data):,} bytes")
    print(f"  sha256 {bundle.sha256}")
    print(f"  files {len(bundle.manifest['files'])}; public key {bundle.manifest['public_key']}")
    print(f"  audit chain: {chain['verdict']}")
    print(f"  chain head at the period's end: {head['head'] if head else 'none (no entry yet)'}")
    print(f"  kept at {uri} (the console's /evidence/{args.period.name})")
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    import os

    from mm_orchestration.features.evidence.check import verify
    from mm_orchestration.features.evidence.keys import PUBLIC_KEY_VAR, public_key
    from mm_orchestration.platform.settings import SettingsError

    given = args.public_key or os.environ.get(PUBLIC_KEY_VAR, "")
    if not given.strip():
        raise SettingsError(
            f"give the public key to check against: --public-key KEY (or a file), or "
            f"{PUBLIC_KEY_VAR}; never the one inside the bundle"
        )
    key = public_key(given, "--public-key" if args.public_key else PUBLIC_KEY_VAR)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        return refuse(f"{args.file}: {exc.strerror or exc}")
    checked = verify(data, key)
    manifest = checked.manifest or {}
    if checked.ok:
        print(
            f"{args.file}: verified: evidence for {manifest.get('period')}, "
            f"{len(manifest.get('files', []))} files, made {manifest.get('generated_at')} by "
            f"{manifest.get('generated_by')}"
        )
        return 0
    print(f"{args.file}: NOT verified:", file=sys.stderr)
    for problem in checked.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_BAD_BUNDLE


def cmd_evidence_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mm_orchestration.features.evidence.keys import (
        PUBLIC_KEY_VAR,
        SIGNING_KEY_VAR,
        private_text,
        public_pem,
        public_text,
    )

    key = Ed25519PrivateKey.generate()
    if args.public_pem is not None:
        try:
            args.public_pem.write_text(public_pem(key.public_key()), encoding="ascii")
        except OSError as exc:
            return refuse(f"cannot write {args.public_pem}: {exc.strerror or exc}")
    print("# The signing key: into the secret environment file (mode 0600), nowhere else.")
    print(f"{SIGNING_KEY_VAR}={private_text(key)}")
    print("# The public key: give it to the auditors; it only checks.")
    print(f"{PUBLIC_KEY_VAR}={public_text(key.public_key())}")
    if args.public_pem is not None:
        print(f"# The same public key as PEM, for openssl: {args.public_pem}")
    return 0


def cmd_evidence_public_key(args: argparse.Namespace) -> int:
    from mm_orchestration.features.evidence.keys import public_pem, public_text, signing_key

    key = signing_key().public_key()
    print(public_pem(key).rstrip("\n") if args.pem else public_text(key))
    return 0
