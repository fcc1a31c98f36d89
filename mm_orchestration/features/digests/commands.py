"""`mm-jobs digest preview`: what one person's digest would say, for support and the portal
team; sends and records nothing."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Any

from mm_orchestration.cli.arguments import (
    connection,
    instant,
    json_lines,
    local_settings,
    printable,
    refuse,
)
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.text import NOT_SHOWN


def register(sub: Any) -> None:
    """Add `mm-jobs digest ...`."""
    digest = sub.add_parser("digest", help="the notification digest: what one person would receive")
    gsub = digest.add_subparsers(required=True, metavar="ACTION")
    p = gsub.add_parser(
        "preview",
        help="what USER would receive now (the template data, as JSON); sends and records nothing",
    )
    p.add_argument("user", metavar="USER", help="a user id (UUID) or email address (any case)")
    p.add_argument(
        "--at",
        type=instant,
        help="as at this instant, ISO 8601 with its offset (2026-11-30T08:00:00+11:00 or ...Z); "
        "default: now",
    )
    p.set_defaults(func=cmd_digest_preview)


PERSON = query(__package__, "person")


def cmd_digest_preview(args: argparse.Namespace) -> int:
    """Print what one person's digest would say at --at (default now), for support and the
    portal team, without queueing, sending or recording anything."""
    from mm_orchestration.features.digests.preview import preview

    settings = local_settings()
    # USER is quoted back only once it is one of the portal's users (their address as
    # stored), or a well-formed UUID: what else was typed may be anything.
    shown = printable(args.user.strip())
    if not args.user.isprintable():
        return refuse(f"USER holds control characters; give a user id or an address; {NOT_SHOWN}")
    try:
        person_id: uuid.UUID | None = uuid.UUID(args.user.strip())
    except ValueError:
        person_id = None
        if "@" not in args.user:
            return refuse(f"USER is neither a user id (UUID) nor an email address; {NOT_SHOWN}")
    at = args.at or datetime.now(UTC)
    with connection() as conn, conn.transaction():
        # Read only, so that nothing the preview runs can write, whatever it becomes.
        conn.execute("SET TRANSACTION READ ONLY")
        people = conn.execute(PERSON, {"id": person_id, "email": args.user}).fetchall()
        if not people:
            asked = str(person_id) if person_id else "with that address"
            return refuse(f"no user {asked}", code=1)
        if len(people) > 1:
            ids = ", ".join(str(row[0]) for row in people)
            return refuse(
                f"{len(people)} users have the address {shown} (one per agency): {ids}; "
                "give the user id",
                code=1,
            )
        (user_id, reasons) = people[0]
        result = None if reasons else preview(conn, user_id, at, settings.timezone)
    if result is None:
        why = "; ".join(reasons) or "not eligible now"
        return refuse(f"user {user_id} gets no digest: {why}", code=1)
    print(
        json_lines(
            {
                "user_id": result["user_id"],
                "at": at.isoformat(),
                "zone": result["zone"],
                "frequency": result["frequency"],
                "period": result["period"],
                "moment": result["moment"],
                "moment_note": _moment_note(result),
                "settled": result["settled"],
                "suppressed": result["suppressed"],
                "data": result["data"],
            }
        )
    )
    return 0


def _moment_note(result: dict[str, Any]) -> str:
    """What happened to this period's digest moment, in words (a gap, an overlap, a miss)."""
    from mm_orchestration.features.digests.moments import MERGED, MOVED

    settled = result["settled"]
    if settled and settled["outcome"] == "missed":
        return "missed: its moment passed more than the grace ago (recorded, never sent stale)"
    if result["moment"] is None:
        return "no digest moment in this period (not one of their days)"
    return {
        MOVED: "moved: their time does not exist that day (clocks went forward); due at the "
        "transition",
        MERGED: "merged: their time happens twice that day (clocks went back); due at the first",
    }.get(result["shift"], "on time")
