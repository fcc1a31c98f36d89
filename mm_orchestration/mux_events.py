"""Mux webhook events: validate an envelope, verify its signature, apply it to a video.

Pure rules plus one SQL statement per event; the replay job decides transactions,
attempts and escalation. The event shape is in `design/portal-database.md`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

STATUS_BY_TYPE = {
    "video.asset.created": "preparing",
    "video.asset.ready": "ready",
    "video.asset.errored": "errored",
    "video.asset.deleted": "deleted",
}
UPLOAD_LINKED = "video.upload.asset_created"


class EventError(Exception):
    """This attempt failed; the message says exactly why (it goes in `last_error`)."""


class BadSignature(EventError):
    """The stored Mux-Signature does not match the stored body: never apply, dead at once."""


@dataclass(frozen=True)
class Envelope:
    type: str
    id: str
    created_at: datetime
    asset_id: str | None
    upload_id: str | None
    duration: Decimal | None
    playback_id: str | None


def parse_envelope(payload: Any) -> Envelope:
    """A valid Mux envelope, or EventError naming the first thing wrong with it."""
    if not isinstance(payload, dict):
        raise EventError(f"invalid envelope: expected a JSON object, got {type(payload).__name__}")
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise EventError("invalid envelope: missing 'type'")
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise EventError("invalid envelope: missing 'id'")
    created_text = payload.get("created_at")
    try:
        created_at = datetime.fromisoformat(str(created_text).replace("Z", "+00:00"))
    except ValueError:
        raise EventError(
            f"invalid envelope: 'created_at' {created_text!r} is not a timestamp"
        ) from None
    if created_at.tzinfo is None:
        raise EventError(f"invalid envelope: 'created_at' {created_text!r} has no time zone")
    data = payload.get("data")
    obj: dict[str, Any] = payload["object"] if isinstance(payload.get("object"), dict) else {}
    if kind not in STATUS_BY_TYPE and kind != UPLOAD_LINKED:
        return Envelope(kind, event_id, created_at, None, None, None, None)
    if not isinstance(data, dict):
        raise EventError(f"invalid envelope: {kind} has no 'data' object")
    if kind == UPLOAD_LINKED:
        upload_id = data.get("id") if obj.get("type") != "asset" else data.get("upload_id")
        asset_id = data.get("asset_id") or (obj.get("id") if obj.get("type") == "asset" else None)
        if not isinstance(upload_id, str) or not upload_id:
            raise EventError(f"invalid envelope: {kind} has no upload id in 'data.id'")
        if not isinstance(asset_id, str) or not asset_id:
            raise EventError(f"invalid envelope: {kind} has no 'data.asset_id'")
        return Envelope(kind, event_id, created_at, asset_id, upload_id, None, None)
    asset_id = data.get("id")
    if not isinstance(asset_id, str) or not asset_id:
        raise EventError(f"invalid envelope: {kind} has no asset id in 'data.id'")
    upload_id = data.get("upload_id") if isinstance(data.get("upload_id"), str) else None
    duration = None
    if data.get("duration") is not None:
        try:
            duration = Decimal(str(data["duration"]))
        except ArithmeticError:
            raise EventError(f"invalid envelope: 'data.duration' {data['duration']!r}") from None
        if not duration.is_finite() or duration < 0:
            raise EventError(f"invalid envelope: 'data.duration' {data['duration']!r}")
    playback_id = None
    playback_ids = data.get("playback_ids")
    if isinstance(playback_ids, list) and playback_ids and isinstance(playback_ids[0], dict):
        first = playback_ids[0].get("id")
        playback_id = first if isinstance(first, str) else None
    return Envelope(kind, event_id, created_at, asset_id, upload_id, duration, playback_id)


def verify_signature(secret: str, raw_body: str, header: str) -> None:
    """Mux-Signature `t=<unix>,v1=<hex>[,v1=...]`: HMAC-SHA256 of `t.body`, any v1 may match.

    The age of `t` is not checked: a dead-letter replay happens later by design.
    """
    parts = [p.strip().split("=", 1) for p in header.split(",") if "=" in p]
    timestamps = [v for k, v in parts if k == "t"]
    signatures = [v for k, v in parts if k == "v1"]
    if not timestamps or not signatures:
        raise BadSignature("invalid Mux-Signature: needs t= and at least one v1=")
    expected = hmac.new(
        secret.encode(), f"{timestamps[0]}.{raw_body}".encode(), hashlib.sha256
    ).hexdigest()
    if not any(hmac.compare_digest(expected, s.lower()) for s in signatures):
        raise BadSignature("invalid Mux-Signature: no v1 signature matches the stored body")


@dataclass(frozen=True)
class Applied:
    outcome: str  # applied, stale, ignored
    media_asset_id: Any = None


# Find the video by its Mux asset id, else by its upload id (and link it): one row locked.
_FIND = """
SELECT id, mux_asset_id, status_changed_at FROM portal.media_assets
 WHERE mux_asset_id = %(asset_id)s
    OR (mux_upload_id = %(upload_id)s AND %(upload_id)s IS NOT NULL
        AND (mux_asset_id IS NULL OR mux_asset_id = %(asset_id)s))
 ORDER BY (mux_asset_id = %(asset_id)s) DESC NULLS LAST
 LIMIT 1
 FOR UPDATE
"""

_APPLY_STATUS = """
UPDATE portal.media_assets
   SET status = %(status)s,
       status_changed_at = %(created_at)s,
       updated_at = now(),
       mux_asset_id = coalesce(mux_asset_id, %(asset_id)s),
       duration_seconds = coalesce(%(duration)s, duration_seconds),
       mux_playback_id = coalesce(%(playback_id)s, mux_playback_id)
 WHERE id = %(id)s AND (status_changed_at IS NULL OR status_changed_at <= %(created_at)s)
"""

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
            "SELECT id, mux_asset_id, status_changed_at FROM portal.media_assets"
            " WHERE mux_upload_id = %(upload_id)s ORDER BY created_at LIMIT 1 FOR UPDATE",
            params,
        ).fetchone()
    else:
        row = conn.execute(_FIND, params).fetchone()
    if row is None:
        where = (
            f"mux_upload_id {event.upload_id!r}"
            if event.type == UPLOAD_LINKED
            else f"mux_asset_id {event.asset_id!r}"
            + (f" or mux_upload_id {event.upload_id!r}" if event.upload_id else "")
        )
        raise EventError(f"no media asset with {where} (yet): {event.type} {event.id}")
    video_id, linked, changed_at = row
    if changed_at is not None and event.created_at < changed_at:
        return Applied("stale", video_id)
    if event.type == UPLOAD_LINKED:
        if linked not in (None, event.asset_id):
            return Applied("stale", video_id)  # already linked to another asset: keep it
        conn.execute(_LINK_UPLOAD, {"id": video_id, "asset_id": event.asset_id})
        return Applied("applied", video_id)
    updated = conn.execute(
        _APPLY_STATUS,
        {
            "id": video_id,
            "status": STATUS_BY_TYPE[event.type],
            "created_at": event.created_at,
            "asset_id": event.asset_id,
            "duration": event.duration if event.type == "video.asset.ready" else None,
            "playback_id": event.playback_id if event.type == "video.asset.ready" else None,
        },
    ).rowcount
    return Applied("applied" if updated else "stale", video_id)
