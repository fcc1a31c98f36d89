"""`mm-jobs audit`: prove from the shell that the audit trail was not tampered with.

`verify` walks the hash chain (all of it, or the links made in a period) and names the
first entry that does not hold, exiting 1; `head` prints the chain's head (now, or at the
end of a period), which an auditor keeps to compare with later.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mm_orchestration.cli.arguments import connection, moment, refuse

EXIT_BROKEN = 1


def _head(value: str) -> Any:
    """`--expect-head SEQ.SEQ...:SHA256`: a head recorded earlier (a download's, a bundle's)."""
    from mm_orchestration.features.audit_trail.chain import Head

    try:
        return Head.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    """Add `mm-jobs audit ...`."""
    audit = sub.add_parser("audit", help="the audit trail's hash chain: verify it, print its head")
    asub = audit.add_subparsers(required=True, metavar="ACTION")
    p = asub.add_parser(
        "verify",
        help="walk the chain and name the first entry edited, deleted or inserted out of "
        "order (exit 1)",
    )
    p.add_argument("--since", type=moment, help="links made from (date or time, MM_TIMEZONE)")
    p.add_argument("--until", type=moment, help="links made before (date or time)")
    p.add_argument(
        "--expect-head",
        type=_head,
        action="append",
        default=[],
        metavar="SEQ.SEQ...:SHA256",
        help="a head recorded earlier (a download's X-Audit-Chain-Head, a bundle's manifest, "
        "`mm-jobs audit head`) that must still be in the chain; repeatable",
    )
    p.set_defaults(func=cmd_audit_verify)
    p = asub.add_parser("head", help="the chain's head now, or at the end of a period")
    p.add_argument("--until", type=moment, help="the newest link made before this moment")
    p.set_defaults(func=cmd_audit_head)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from mm_orchestration.features.audit_trail.chain import verify

    if args.since and args.until and args.since >= args.until:
        return refuse("--since must be before --until")
    with connection() as conn:
        verdict = verify(conn, args.since, args.until, args.expect_head)
    if verdict.ok:
        print(verdict.summary())
        return 0
    print(verdict.summary(), file=sys.stderr)
    for problem in verdict.problems:
        print(f"  {problem.kind:<12} {problem.where}: {problem.message}", file=sys.stderr)
    print(
        "The entries named were changed, removed or added outside the audit path: keep the "
        "database as it is and tell compliance (docs/audit.md, 'When verify fails').",
        file=sys.stderr,
    )
    return EXIT_BROKEN


def cmd_audit_head(args: argparse.Namespace) -> int:
    from mm_orchestration.features.audit_trail.chain import head

    with connection() as conn:
        found = head(conn, args.until)
    if found is None:
        print("the audit chain has no link yet" + (" before then" if args.until else ""))
        return 0
    at = found.linked_at.isoformat() if found.linked_at else "?"
    print(f"{found.text()}  (linked at {at})")
    return 0
