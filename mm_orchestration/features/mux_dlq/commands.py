"""`mm-jobs dlq`: the Mux dead-letter queue from the shell (list, show, requeue, discard),
each change audited as the console's are."""

from __future__ import annotations

import argparse
from typing import Any

from mm_orchestration.cli.arguments import (
    LIMIT_RANGE,
    ROW_ID_RANGE,
    actor,
    connection,
    one_of,
    os_user,
    printable,
    refuse,
    whole,
)


def register(sub: Any) -> None:
    """Add `mm-jobs dlq ...`."""
    dlq = sub.add_parser("dlq", help="the Mux dead-letter queue: list, show, requeue, discard")
    dsub = dlq.add_subparsers(required=True, metavar="ACTION")
    p = dsub.add_parser("list", help="dead letters, newest first")
    statuses = ["pending", "replayed", "dead", "discarded"]
    p.add_argument("--status", type=one_of(statuses), metavar="{" + ",".join(statuses) + "}")
    p.add_argument("--limit", type=whole(*LIMIT_RANGE), default=100)
    p.set_defaults(func=cmd_dlq_list)
    p = dsub.add_parser("show", help="one dead letter: payload and error history")
    p.add_argument("id", type=whole(*ROW_ID_RANGE))
    p.set_defaults(func=cmd_dlq_show)
    p = dsub.add_parser(
        "requeue",
        help="back to pending, attempts reset (audited); --all-dead skips discarded letters",
    )
    p.add_argument("ids", type=whole(*ROW_ID_RANGE), nargs="*")
    p.add_argument("--all-dead", action="store_true", help="requeue every dead letter")
    p.add_argument("--actor", type=actor, help="who is doing this; default: you")
    p.set_defaults(func=cmd_dlq_requeue)
    p = dsub.add_parser("discard", help="close a dead letter for good (audited)")
    p.add_argument("id", type=whole(*ROW_ID_RANGE))
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", type=actor, help="who is doing this; default: you")
    p.set_defaults(func=cmd_dlq_discard)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from mm_orchestration.features.mux_dlq.operations import list_rows

    with connection() as conn:
        rows = list_rows(conn, args.status, args.limit)
    for r in rows:
        kind = printable(r["event_type"] or "?")
        print(
            f"{r['id']:>8}  {r['status']:<9}  attempts={r['attempts']}  {kind:<28}"
            f"  {printable(r['event_id'])}  {printable(r['last_error'] or '')}"
        )
    print(f"{len(rows)} row(s)")
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    import json

    from mm_orchestration.features.mux_dlq.operations import show_row

    with connection() as conn:
        try:
            row = show_row(conn, args.id)
        except LookupError as exc:
            return refuse(str(exc), code=1)
    row.pop("signature", None)  # a credential-like header: not echoed
    print(json.dumps(row, indent=2, default=str))
    return 0


def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    from mm_orchestration.features.mux_dlq.operations import requeue

    if not args.ids and not args.all_dead:
        return refuse("give dead-letter ids, or --all-dead")
    actor = args.actor or os_user()
    with connection() as conn:
        try:
            done = requeue(conn, args.ids, actor, args.all_dead, os_user=os_user())
        except LookupError as exc:
            _audit_dlq_failure(conn, actor, "dlq_requeue", args.ids, exc, all_dead=args.all_dead)
            return refuse(str(exc), code=1)
    print(f"requeued {len(done)}: {done}")
    return 0


def cmd_dlq_discard(args: argparse.Namespace) -> int:
    from mm_orchestration.features.mux_dlq.operations import discard

    actor = args.actor or os_user()
    with connection() as conn:
        try:
            discard(conn, args.id, args.reason, actor, os_user=os_user())
        except (LookupError, ValueError) as exc:
            _audit_dlq_failure(conn, actor, "dlq_discard", [args.id], exc, reason=args.reason)
            return refuse(str(exc), code=1)
    print(f"discarded {args.id}")
    return 0


def _audit_dlq_failure(
    conn: Any, actor: str, action: str, ids: list[int], exc: Exception, **asked: Any
) -> None:
    """A DLQ command that changed nothing is audited too (`failed`, with why): an attempt
    on an unknown or already-closed letter is part of who did what."""
    from mm_orchestration.platform import audit

    audit.record(
        conn,
        actor,
        action,
        "mux-webhook-retry",
        None,
        {"ids": ids, **asked, "error": str(exc), "source": "cli", "os_user": os_user()},
        target=",".join(map(str, ids)) or None,
        outcome="failed",
    )
