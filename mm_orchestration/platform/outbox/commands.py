"""`mm-jobs outbox`: failed and in-flight emails listed, and resent after a fix (audited;
each key still goes at most once)."""

from __future__ import annotations

import argparse
from typing import Any

from mm_orchestration.cli.arguments import (
    LIMIT_RANGE,
    actor,
    address,
    connection,
    moment,
    one_of,
    os_user,
    printable,
    whole,
)
from mm_orchestration.platform import inventory


def register(sub: Any) -> None:
    """Add `mm-jobs outbox ...`."""
    outbox = sub.add_parser(
        "outbox", help="the email outbox: list failed emails, resend them after a fix"
    )
    osub = outbox.add_subparsers(required=True, metavar="ACTION")
    p = osub.add_parser(
        "list", help="failed and in-flight emails, newest first (keys and reasons, no address)"
    )
    p.add_argument(
        "--unknown",
        action="store_true",
        help="only those whose outcome is unknown, or still (or stale) in flight: look each "
        "key up in SendGrid's activity log",
    )
    kinds = sorted(inventory.KIND_SENDERS)
    kinds_shown = "{" + ",".join(kinds) + "}"
    p.add_argument("--kind", type=one_of(kinds), metavar=kinds_shown, help="only this kind")
    p.add_argument("--limit", type=whole(*LIMIT_RANGE), default=100)
    p.set_defaults(func=cmd_outbox_list)
    p = osub.add_parser(
        "resend",
        help="requeue failed emails of a kind (audited); each key still goes at most once",
    )
    p.add_argument(
        "--kind", required=True, type=one_of(kinds), metavar=kinds_shown, help="which emails"
    )
    p.add_argument(
        "--since",
        required=True,
        type=moment,
        help="failed at or after: YYYY-MM-DD or YYYY-MM-DDTHH:MM (MM_TIMEZONE unless given)",
    )
    p.add_argument(
        "--include-unknown",
        action="store_true",
        help="also those whose outcome is unknown (only after SendGrid's activity log shows "
        "they were not delivered)",
    )
    p.add_argument(
        "--to",
        type=address,
        help="send them to this address instead (mail for our own contacts, after fixing "
        "RELIABILITY_EMAIL, COMPLIANCE_EMAIL or ADMIN_EMAIL)",
    )
    p.add_argument("--actor", type=actor, help="who is doing this; default: you")
    p.set_defaults(func=cmd_outbox_resend)


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from mm_orchestration.platform.outbox import list_failed

    with connection() as conn:
        rows = list_failed(conn, args.unknown, args.kind, args.limit)
    for r in rows:
        when = r["at"].isoformat(timespec="seconds") if r["at"] else "-"
        print(
            f"{printable(r['idempotency_key'])}  {r['state']:<7}  {r['kind']}  {when}"
            f"  run={r['failed_run_id'] or r['claimed_by'] or '-'}"
            f"  {printable(r['last_error'] or '')}"
        )
    print(f"{len(rows)} row(s)")
    stale = sum(r["state"] == "stale" for r in rows)
    if stale:
        print(
            f"{stale} stale: their deliverer stopped mid-send; the next run of the job that "
            "sends them reports them as outcome unknown (look each key up in SendGrid)"
        )
    return 0


def cmd_outbox_resend(args: argparse.Namespace) -> int:
    from mm_orchestration.platform.outbox import KIND_SENDERS, resend

    actor = args.actor or os_user()
    with connection() as conn:
        keys = resend(conn, args.kind, args.since, actor, args.include_unknown, args.to)
    for key in keys:
        print(printable(key))
    sender = KIND_SENDERS.get(args.kind, "the job that sends them")
    print(
        f"requeued {len(keys)} {args.kind} email(s) failed since {args.since.isoformat()}; "
        f"they go with the next run of {sender}"
        + (
            f" (now: mm-jobs run {sender})"
            if sender in {s.name for s in inventory.INVENTORY}
            else ""
        )
    )
    return 0
