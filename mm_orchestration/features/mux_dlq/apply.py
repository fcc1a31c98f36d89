"""Apply one Mux event to its video: find it by its Mux asset id (else by its upload id,
and link it), leave it as it is when the event is stale, and set its status in one
statement. The replay decides transactions, attempts and escalation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from mm_orchestration.features.mux_dlq.events import (
    RANK_BY_STATUS,
    STATUS_BY_TYPE,
    UPLOAD_LINKED,
    Envelope,
    EventError,
    status_rank_sql,
)
from mm_orchestration.platform.sql_files import query

APPLY_STATUS = sql.SQL(query(__package__, "apply_status")).format(
    status_rank=status_rank_sql(sql.Identifier("status"))
)


@dataclass(frozen=True)
class Applied:
    outcome: str  # applied, stale, ignored
    media_asset_id: Any = None


def is_stale(event: Envelope, changed_at: datetime | None, status: str | None) -> bool:
    """Older than the video's last applied event, or as old and earlier in the lifecycle."""
    if changed_at is None:
        return False
    if event.created_at != changed_at or event.type == UPLOAD_LINKED:
        return event.created_at < changed_at
    return event.rank < RANK_BY_STATUS.get(status or "", 0)


_LINK_UPLOAD = """
UPDATE portal.media_assets
   SET mux_asset_id = %(asset_id)s, updated_at = now()
 WHERE id = %(id)s AND mux_asset_id IS NULL
"""


def apply_event(conn: psycopg.Connection, event: Envelope) -> Applied:
    """Apply one event in the caller's transaction. Raises EventError when it cannot yet."""
    if event.type not in STATUS_BY_TYPE and event.type != UPLOAD_LINKED:
        return Applied("ignored")
    params = {"asset_id": event.asset_id, "upload_id": event.upload_id}
    if event.type == UPLOAD_LINKED:
        row = conn.execute(
            "SELECT id, mux_asset_id, status_changed_at, status FROM portal.media_assets"
            " WHERE mux_upload_id = %(upload_id)s ORDER BY created_at LIMIT 1 FOR UPDATE",
            params,
        ).fetchone()
    else:
        row = conn.execute(query(__package__, "find_video"), params).fetchone()
    if row is None:
        where = (
            f"mux_upload_id {event.upload_id!r}"
            if event.type == UPLOAD_LINKED
            else f"mux_asset_id {event.asset_id!r}"
            + (f" or mux_upload_id {event.upload_id!r}" if event.upload_id else "")
        )
        raise EventError(f"no media asset with {where} (yet): {event.type} {event.id}")
    video_id, linked, changed_at, status = row
    if is_stale(event, changed_at, status):
        return Applied("stale", video_id)
    if event.type == UPLOAD_LINKED:
        if linked not in (None, event.asset_id):
            return Applied("stale", video_id)  # already linked to another asset: keep it
        conn.execute(_LINK_UPLOAD, {"id": video_id, "asset_id": event.asset_id})
        return Applied("applied", video_id)
    updated = conn.execute(
        APPLY_STATUS,
        {
            "id": video_id,
            "status": STATUS_BY_TYPE[event.type],
            "created_at": event.created_at,
            "rank": event.rank,
            "asset_id": event.asset_id,
            "duration": event.duration if event.type == "video.asset.ready" else None,
            "playback_id": event.playback_id if event.type == "video.asset.ready" else None,
        },
    ).rowcount
    return Applied("applied" if updated else "stale", video_id)
